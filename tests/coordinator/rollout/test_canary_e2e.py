"""Canary rollouts with real processes: a coordinator, two nodes serving mnist_edge
versions 1 and 2, the admin commands as an operator types them.

The worse canary is version 1's model file with a ``calibration.json`` whose softmax
temperature is 25: the same top-1 labels, but every confidence flattened (from ~0.99 to
~0.2). That is a real regression: the cascade escalates on low confidence, so such a
version would send most items to the (paid) cloud tier, and a confidence threshold on the
client side would reject most answers. The comparison sees it as a confidence
distribution that fell (KS statistic near 1). The good canary is an identical copy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as tc

import edgeshard_models
from coordinator.jobs.items import ItemSource
from tests.conftest import Fleet

EDGE = edgeshard_models.EDGE_MODEL
MIN_REQUESTS = 50
pytestmark = pytest.mark.timeout(240)
# p95 latency on a shared 2-core machine varies more than the 1.5x default between two
# identical versions; the confidence margin is what these tests are about.
# Latency and error margins wide open: on a loaded shared machine the p95 of a small sample
# of identical versions varies by several times, and overload errors fall where they fall
# (once an identical canary was rolled back on latency). Those rules are tested in
# test_verdict.py; these tests are about the confidence rule and the rollout mechanics.
# The KS margin is widened too: at 50 canary against ~200 stable requests, two samples of
# one model's confidences differ by KS > 0.2 (the default, meant for 200 requests) about
# 8 % of the time (2 exp(-2 (0.2 / 0.158)^2)), and the verdict looks many times; a CI run
# rolled back an identical canary at KS 0.242. KS > 0.4 by chance is ~5e-6; the worse
# canary below gives > 0.9.
MARGINS = ("--min-requests", str(MIN_REQUESTS), "--latency-p95-ratio", "1000",
           "--error-rate", "0.5", "--confidence-ks", "0.4")


def canary_repository(tmp_path, shipped, temperature: float | None):
    """The shipped repository plus mnist_edge version 2 (a copy of 1, with a calibration
    temperature when given)."""
    repo = tmp_path / "repository"
    shutil.copytree(shipped, repo)
    v2 = repo / EDGE / "2"
    shutil.copytree(repo / EDGE / "1", v2)
    for stale in ("calibration.json",):
        (v2 / stale).unlink(missing_ok=True)
    if temperature is not None:
        (v2 / "calibration.json").write_text(json.dumps({"temperature": temperature}))
    return repo


def admin(fleet, *args: str) -> subprocess.CompletedProcess:
    """``edge-coordinator ARGS --coordinator ADDRESS`` as a separate process."""
    return subprocess.run([sys.executable, "-m", "coordinator", *args, "--coordinator",
                           fleet.coordinator.address], capture_output=True, text=True,
                          timeout=60)


def status(fleet) -> dict:
    out = admin(fleet, "rollout", "status", EDGE, "--json")
    assert out.returncode == 0, out.stderr
    (rollout,) = json.loads(out.stdout)
    return rollout


def start_fleet(tmp_path, repo) -> Fleet:
    fleet = Fleet(tmp_path, repo)
    fleet.start_coordinator("--rollout-interval-s", "0.2", "--metrics-port", "0")
    fleet.add_node("n0")
    fleet.add_node("n1")
    fleet.wait_live(2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # both nodes report both versions
        if all(set(m.versions) >= {"1", "2"} for n in fleet.client.nodes() for m in n.models
               if m.name == EDGE):
            return fleet
        time.sleep(0.1)
    raise AssertionError(f"versions not reported: {fleet.client.nodes()}")


def restart(fleet) -> None:
    port = fleet.coordinator.info["grpc_port"]
    fleet.coordinator.kill()
    fleet.start_coordinator("--rollout-interval-s", "0.2", "--port", str(port),
                            name="coordinator-2")
    fleet.wait_live(2)


class Traffic:
    """Single-image requests to the coordinator, cycling over the hold-out images."""

    def __init__(self, fleet, holdout):
        self.images = holdout[0]
        self.client = tc.InferenceServerClient(fleet.coordinator.address)
        self.k = 0

    def send(self, version: str = "") -> str:
        image = self.images[self.k % len(self.images)][None]
        self.k += 1
        inp = tc.InferInput("image", list(image.shape), "UINT8")
        inp.set_data_from_numpy(image)
        answer = self.client.infer(EDGE, [inp], model_version=version)
        return answer.get_response().model_version

    def until(self, done, most: int) -> list[str]:
        versions = []
        while len(versions) < most and not done():
            versions.extend(self.send() for _ in range(20))
        return versions

    def close(self):
        self.client.close()


def test_a_worse_canary_is_rolled_back_within_its_minimum_sample(tmp_path, shipped_repository,
                                                                 holdout):
    fleet = start_fleet(tmp_path, canary_repository(tmp_path, shipped_repository, 25.0))
    traffic = Traffic(fleet, holdout)
    try:
        out = admin(fleet, "rollout", "start", EDGE, "--canary", "2", "--share", "0.2",
                    "--shadow", "0.1", *MARGINS)
        assert out.returncode == 0, out.stderr
        assert "stable 1, canary 2" in out.stdout and "running" in out.stdout
        versions = traffic.until(lambda: status(fleet)["state"] != "running", 2000)
        rollout = status(fleet)
        assert rollout["state"] == "rolled_back", rollout
        assert "confidence fell" in rollout["reason"]
        assert MIN_REQUESTS <= rollout["stats"]["canary_requests"] <= MIN_REQUESTS + 15
        assert rollout["stats"]["confidence_ks"] > 0.9
        share = versions.count("2") / len(versions)
        assert 0.08 < share < 0.35, share  # ~20 % went to the canary meanwhile
        # From now on unpinned requests go to stable; a pinned one still gets the canary.
        assert {traffic.send() for _ in range(100)} == {"1"}
        assert traffic.send("2") == "2"
        metrics_port = fleet.coordinator.info["metrics_port"]
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        assert f'edgeshard_coordinator_rollout_state{{model="{EDGE}",state="rolled_back"}} 1.0' \
            in page
        assert f'edgeshard_coordinator_rollout_decisions_total{{decision="rolled_back",' \
            f'model="{EDGE}"}} 1.0' in page
        assert 'arm="canary",model="mnist_edge",outcome="ok",version="2"' in page
        log = fleet.coordinator.log_path.read_text()
        assert "canary 2 rolled back: confidence fell" in log

        traffic.close()
        restart(fleet)  # the decision outlives the coordinator
        traffic = Traffic(fleet, holdout)
        after = status(fleet)
        assert after["state"] == "rolled_back" and after["reason"] == rollout["reason"]
        assert {traffic.send() for _ in range(50)} == {"1"}
    finally:
        traffic.close()
        fleet.close()


def test_a_good_canary_is_kept_survives_a_restart_and_is_promoted(tmp_path, shipped_repository,
                                                                  holdout):
    fleet = start_fleet(tmp_path, canary_repository(tmp_path, shipped_repository, None))
    traffic = Traffic(fleet, holdout)
    try:
        out = admin(fleet, "rollout", "start", EDGE, "--canary", "2", "--share", "0.2",
                    "--shadow", "0.1", *MARGINS)
        assert out.returncode == 0, out.stderr
        traffic.until(lambda: status(fleet)["stats"].get("canary_requests", 0)
                      >= 3 * MIN_REQUESTS, 3000)
        rollout = status(fleet)
        assert rollout["state"] == "running" and rollout["verdict"] == "keep", rollout
        assert rollout["stats"]["confidence_ks"] < 0.2
        # Job shards of a job that pins no version split the same way.
        images = np.tile(holdout[0], (2, 1, 1))[:640]
        job = fleet.client.submit(EDGE, ItemSource.from_arrays(
            [f"i{k}" for k in range(len(images))], images), shard_size=8)
        while fleet.client.get(job.job_id).state == "running":
            time.sleep(0.1)
        shard_versions = [r.model_version for r in fleet.client.results(job.job_id)][::8]
        assert 0.05 < shard_versions.count("2") / len(shard_versions) < 0.4

        traffic.close()
        restart(fleet)  # mid-rollout: still running, with the same labels
        traffic = Traffic(fleet, holdout)
        again = status(fleet)
        assert (again["state"], again["stable"], again["canary"], again["share"]) == \
            ("running", "1", "2", 0.2)
        versions = [traffic.send() for _ in range(200)]
        assert {"1", "2"} == set(versions)

        out = admin(fleet, "rollout", "promote", EDGE, "--reason", "looks good")
        assert out.returncode == 0, out.stderr
        promoted = status(fleet)
        assert (promoted["state"], promoted["stable"], promoted["reason"]) == \
            ("promoted", "2", "looks good")
        assert {traffic.send() for _ in range(50)} == {"2"}
        out = admin(fleet, "rollout", "rollback", EDGE)
        assert out.returncode == 1 and "promoted already" in out.stderr
    finally:
        traffic.close()
        fleet.close()


def test_start_refuses_bad_values_naming_the_flag(tmp_path, shipped_repository):
    fleet = start_fleet(tmp_path, canary_repository(tmp_path, shipped_repository, None))
    try:
        out = admin(fleet, "rollout", "start", EDGE, "--canary", "2", "--share", "2")
        assert out.returncode == 2 and "argument --share" in out.stderr
        out = admin(fleet, "rollout", "start", EDGE, "--canary", "9")
        assert out.returncode == 1 and "--canary: no live node serves" in out.stderr
        out = admin(fleet, "rollout", "start", EDGE, "--canary", "2", "--error-rate", "3")
        assert out.returncode == 1 and "--error-rate: out of range" in out.stderr
        out = admin(fleet, "rollout", "status", EDGE)
        assert out.returncode == 1 and "NOT_FOUND" in out.stderr
        assert np.all([admin(fleet, "rollout", "status").stdout.strip() == "no rollouts"])
    finally:
        fleet.close()
