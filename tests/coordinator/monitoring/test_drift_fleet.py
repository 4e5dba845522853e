"""Drift monitoring end to end (real coordinator and edge-node processes, tritonclient):
shifted inputs in one segment cross the drift thresholds on the coordinator's metrics
page, with one warning in its log, while unshifted hold-out images in another stay
below; per-segment request counters; a version without a profile is reported, not
judged."""

from __future__ import annotations

import re
import shutil
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as tc

import edgeshard_models
from tests.conftest import Fleet

EDGE = edgeshard_models.EDGE_MODEL
PSI_WARN, KS_WARN = 0.2, 0.2
pytestmark = pytest.mark.timeout(180)


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def value(page: str, name: str, **labels) -> float | None:
    """The value of the series ``name`` whose labels include ``labels`` (None: absent)."""
    for line in page.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return None


def send(client, images: np.ndarray, segment: str, batch: int = 20) -> None:
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        inp = tc.InferInput("image", list(chunk.shape), "UINT8")
        inp.set_data_from_numpy(chunk)
        client.infer(EDGE, [inp], parameters={"segment": segment})


def wait_for(port: int, predicate, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        page = scrape(port)
        if predicate(page) or time.monotonic() > deadline:
            return page
        time.sleep(0.2)


@pytest.fixture
def drift_fleet(tmp_path, shipped_repository):
    """A coordinator and one node on a copy of the shipped models, where mnist_cloud's
    version has no profile (mnist_edge keeps the shipped one)."""
    repository = tmp_path / "repository"
    shutil.copytree(shipped_repository, repository)
    (repository / edgeshard_models.CLOUD_MODEL / "1" / "profile.json").unlink()
    fleet = Fleet(tmp_path, repository)
    fleet.start_coordinator("--metrics-port", "0", "--drift-psi-warn", str(PSI_WARN),
                            "--drift-ks-warn", str(KS_WARN), "--drift-min-items", "100")
    fleet.add_node("n1", "--drift-window-items", "200")
    fleet.wait_live(1)
    yield fleet
    fleet.close()


def test_shifted_inputs_cross_the_drift_threshold_and_hold_out_stays_below(drift_fleet,
                                                                           holdout):
    images, _ = holdout
    ok, bad = images[:300], images[300:600]
    brighter = np.clip(bad.astype(np.int16) * 0.6 + 80, 0, 255).astype(np.uint8)  # contrast
    port = drift_fleet.coordinator.info["metrics_port"]
    client = tc.InferenceServerClient(drift_fleet.coordinator.address)
    try:
        send(client, ok, "camera-ok")
        send(client, brighter, "camera-bad")
        page = wait_for(port, lambda p: value(p, "edgeshard_coordinator_drift_psi",
                                              segment="camera-bad", feature="input")
                        is not None and value(p, "edgeshard_coordinator_drift_psi",
                                              segment="camera-ok", feature="input")
                        is not None)
        bad_psi = value(page, "edgeshard_coordinator_drift_psi", model=EDGE,
                        segment="camera-bad", feature="input")
        ok_psi = value(page, "edgeshard_coordinator_drift_psi", model=EDGE,
                       segment="camera-ok", feature="input")
        ok_ks = value(page, "edgeshard_coordinator_drift_ks", segment="camera-ok",
                      feature="input")
        ok_conf = value(page, "edgeshard_coordinator_drift_psi", segment="camera-ok",
                        feature="confidence")
        assert bad_psi >= PSI_WARN, page
        assert value(page, "edgeshard_coordinator_drift_ks", segment="camera-bad",
                     feature="input") >= KS_WARN
        assert ok_psi < PSI_WARN and ok_ks < KS_WARN and ok_conf < PSI_WARN, (ok_psi, ok_ks,
                                                                             ok_conf)
        assert value(page, "edgeshard_coordinator_drift_alert", segment="camera-bad") == 1
        assert value(page, "edgeshard_coordinator_drift_alert", segment="camera-ok") == 0
        assert value(page, "edgeshard_coordinator_drift_window_items",
                     segment="camera-ok") >= 200
        # the contrast cut shows in the mean too: brighter background, in reference stds
        assert value(page, "edgeshard_coordinator_drift_mean_shift", segment="camera-bad",
                     channel="0") > 0.5
        # per-segment counters at the front: 15 requests of 20 items each, all answered
        assert value(page, "edgeshard_coordinator_segment_requests_total", model=EDGE,
                     segment="camera-ok", outcome="ok") == 15
        assert value(page, "edgeshard_coordinator_segment_items_total", model=EDGE,
                     segment="camera-bad") == 300
        # the version without a profile is reported, never judged
        assert value(page, "edgeshard_coordinator_drift_unprofiled",
                     model=edgeshard_models.CLOUD_MODEL, version="1") == 1

        # the camera is fixed: its window rolls over to unshifted images and clears
        send(client, ok[:240], "camera-bad")
        page = wait_for(port, lambda p: value(p, "edgeshard_coordinator_drift_alert",
                                              segment="camera-bad") == 0)
        assert value(page, "edgeshard_coordinator_drift_alert", segment="camera-bad") == 0, \
            "\n".join(line for line in page.splitlines() if "drift" in line)
        assert value(page, "edgeshard_coordinator_drift_psi", segment="camera-bad",
                     feature="input") < PSI_WARN
    finally:
        client.close()
    log = drift_fleet.coordinator.log_path.read_text()
    crossed = re.findall(r"WARNING.*drift: model mnist_edge version 1 segment 'camera-bad' "
                         r"drifted from its reference over the last \d+ items: input PSI", log)
    assert len(crossed) == 1, log  # once per crossing, not on every heartbeat
    assert len(re.findall(r"segment 'camera-bad' is back within its thresholds", log)) == 1
    assert "segment 'camera-ok' drifted" not in log
    assert len(re.findall(r"model mnist_cloud version 1 has no reference profile", log)) == 1


def test_a_node_of_several_processes_reports_the_windows_of_all(fleet, holdout):
    # 16 connections to the 2 processes: all on one of them has odds of 2 in 65,536
    fleet.start_coordinator("--metrics-port", "0", "--connections-per-process", "8")
    fleet.add_node("multi", "--processes", "2")
    fleet.wait_live(1)
    images, _ = holdout
    client = tc.InferenceServerClient(fleet.coordinator.address)
    try:
        for i in range(60):
            inp = tc.InferInput("image", [1, 28, 28], "UINT8")
            inp.set_data_from_numpy(images[i:i + 1])
            client.infer(EDGE, [inp], parameters={"segment": "cam"})
    finally:
        client.close()
    port = fleet.coordinator.info["metrics_port"]
    page = wait_for(port, lambda p: value(p, "edgeshard_coordinator_drift_window_items",
                                          segment="cam") == 60)
    # every request counted, whichever process served it (only one process heartbeats)
    assert value(page, "edgeshard_coordinator_drift_window_items", segment="cam") == 60
