"""The cascade with a third-party cloud tier: Seldon MLServer serving the cloud model.

MLServer returns only ``probabilities`` (no ``label``), has no ModelConfig and no gRPC
health service: the coordinator is configured for it (``--cloud-output probabilities``),
nothing is special-cased."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

import edgeshard_models
from coordinator.jobs.items import ItemSource

EDGE, CLOUD = edgeshard_models.EDGE_MODEL, edgeshard_models.CLOUD_MODEL
pytestmark = pytest.mark.timeout(240)


def test_escalated_items_are_answered_by_mlserver(fleet, cloud_up, holdout):
    fleet.start_coordinator("--cloud", cloud_up.grpc_address, "--cloud-output", "probabilities",
                            "--cascade", f"{EDGE}={CLOUD}",
                            "--escalation", f"{EDGE}=max_prob:0.9")
    fleet.add_node("edge-1")
    fleet.wait_live(1)
    images, labels = holdout
    truth = {str(i): int(label) for i, label in enumerate(labels)}
    status = fleet.client.submit(EDGE, ItemSource.from_arrays(None, images), shard_size=32)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = fleet.client.get(status.job_id)
        if status.state != "running":
            break
        time.sleep(0.1)
    assert status.state == "done" and status.pending_escalations == 0, status
    records = list(fleet.client.results(status.job_id))
    assert Counter(r.id for r in records) == Counter(truth.keys())
    cloud = [r for r in records if r.tier == "cloud"]
    assert 0 < len(cloud) < 200 and status.cloud_answered == len(cloud)
    for r in cloud:  # the answer came from MLServer's probabilities
        assert r.extra["escalated"] and r.extra["cloud_label"] == r.label
        assert 0.0 < r.extra["cloud_confidence"] <= 1.0
    cascade = np.mean([truth[r.id] == r.label for r in records])
    edge_only = np.mean([truth[r.id] == r.extra["edge_label"] for r in records])
    assert cascade > edge_only
