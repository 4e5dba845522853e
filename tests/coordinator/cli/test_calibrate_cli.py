"""``edge-coordinator calibrate`` on the shipped data, with real edge and cloud nodes.

The issue's acceptance: with the threshold calibration picks for a 15 % escalation
budget, the hold-out cascade accuracy is within 0.5 points of cloud-only (or above) and
above the random baseline at the same escalation rate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(180)


def test_calibrate_picks_a_threshold_that_meets_the_acceptance(tmp_path, shipped_repository):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(shipped_repository, repo)
    out = subprocess.run(
        [sys.executable, "-m", "coordinator", "calibrate", "--model", "mnist_edge",
         "--budget", "0.15", "--out", str(tmp_path / "out"), "--model-repository", str(repo),
         "--write"], capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "use: --escalation mnist_edge=max_prob:" in out.stdout
    doc = json.loads((tmp_path / "out" / "mnist_edge_max_prob_sweep.json").read_text())
    assert (tmp_path / "out" / "mnist_edge_max_prob_sweep.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "mnist_edge_max_prob_sweep.csv").read_text().count("\n") > 50
    chosen, hold = doc["summary"]["chosen"], doc["summary"]["holdout"]
    assert chosen["escalation_rate"] <= 0.15
    assert hold["cascade_accuracy"] >= hold["cloud_only_accuracy"] - 0.005
    assert hold["cascade_accuracy"] > hold["random_accuracy"]
    assert hold["escalation_rate"] <= 0.2
    calibration = json.loads((repo / "mnist_edge" / "1" / "calibration.json").read_text())
    assert calibration["temperature"] == pytest.approx(doc["summary"]["temperature"])
    assert calibration["threshold"] == chosen["threshold"]
    # ... and the drift reference, its confidences at the temperature just written
    from edgeshard.profile import parse_profile

    profile = parse_profile((repo / "mnist_edge" / "1" / "profile.json").read_bytes(), "p")
    assert profile.temperature == pytest.approx(calibration["temperature"])
    assert profile.items == 500 and profile.confidence.total == 500
    assert "drift reference at the new temperature" in out.stdout


def test_calibrate_rejects_unknown_policy_and_unreachable_target(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "coordinator", "calibrate", "--policy", "vibes",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=150)
    assert bad.returncode == 2 and "vibes" in bad.stderr
    high = subprocess.run([sys.executable, "-m", "coordinator", "calibrate",
                           "--target-accuracy", "0.999", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=150)
    assert high.returncode == 2 and "target_accuracy" in high.stderr


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def calibrate(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "coordinator", "calibrate", "--out",
                           str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=150)


def test_calibrate_names_an_unknown_model_and_the_server(node, tmp_path):
    edge = calibrate(tmp_path, "--edge", node.address, "--cloud", node.address,
                     "--model", "nope")
    assert edge.returncode == 2, edge.stderr
    assert edge.stderr.startswith(f"edge-coordinator calibrate: edge server {node.address}: "
                                  "NOT_FOUND: ")
    assert "'nope'" in edge.stderr and edge.stderr.rstrip().endswith("(check --model)")
    cloud = calibrate(tmp_path, "--edge", node.address, "--cloud", node.address,
                      "--cloud-model", "nah")
    assert cloud.returncode == 2, cloud.stderr
    assert cloud.stderr.startswith(f"edge-coordinator calibrate: cloud tier {node.address}: "
                                   "NOT_FOUND: ")
    assert "'nah'" in cloud.stderr and cloud.stderr.rstrip().endswith("(check --cloud-model)")
    for out in (edge, cloud):
        assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
        assert not (tmp_path / "out").exists()


def test_calibrate_names_an_unreachable_edge_or_cloud(node, tmp_path):
    port = closed_port()
    edge = calibrate(tmp_path, "--edge", f"127.0.0.1:{port}", "--cloud", node.address)
    assert edge.returncode == 1, edge.stderr
    assert edge.stderr.startswith(
        f"edge-coordinator calibrate: edge server 127.0.0.1:{port}: UNAVAILABLE: ")
    assert edge.stderr.rstrip().endswith("(is it running? check --edge)")
    cloud = calibrate(tmp_path, "--edge", node.address, "--cloud", f"127.0.0.1:{port}")
    assert cloud.returncode == 1, cloud.stderr
    assert cloud.stderr.startswith(
        f"edge-coordinator calibrate: cloud tier 127.0.0.1:{port}: UNAVAILABLE: ")
    assert cloud.stderr.rstrip().endswith("(is it running? check --cloud)")
    for out in (edge, cloud):
        assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
