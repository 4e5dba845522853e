"""The main job (``edge-coordinator demo``) and the coordinator's own lifecycle."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request

import pytest

pytestmark = pytest.mark.timeout(180)


def test_demo_kill_one_loses_and_repeats_nothing(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "coordinator", "demo", "--kill-one", "--repeat", "4",
         "--online", "50", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stdout + out.stderr
    report = out.stdout
    assert re.search(r"^lost\s+0$", report, re.M), report
    assert re.search(r"^duplicated\s+0$", report, re.M), report
    assert re.search(r"^results\s+4000$", report, re.M), report
    assert "node-2 killed (SIGKILL) part-way" in report
    accuracy = float(re.search(r"^accuracy\s+([0-9.]+)", report, re.M).group(1))
    assert accuracy > 0.93
    assert re.search(r"online p50\s+[0-9.]+ ms, p99", report)


def test_coordinator_metrics_and_graceful_stop(fleet, holdout):
    fleet.start_coordinator("--metrics-port", "0")
    fleet.add_node("n0")
    fleet.wait_live(1)
    from coordinator.api.clients import OIPClient

    client = OIPClient(fleet.coordinator.address)
    try:
        assert client.classify("mnist_edge", holdout[0][:4]).label.shape == (4,)
    finally:
        client.close()
    url = f"http://127.0.0.1:{fleet.coordinator.info['metrics_port']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'edgeshard_coordinator_forwarded_total{code="OK",node="n0"}' in text
    assert "edgeshard_coordinator_forward_seconds_bucket" in text
    fleet.coordinator.process.send_signal(signal.SIGTERM)
    assert fleet.coordinator.process.wait(30) == 0
    assert "coordinator stopped" in fleet.coordinator.log_tail(5)


def test_serve_config_errors_name_the_field(tmp_path):
    out = subprocess.run([sys.executable, "-m", "coordinator", "serve", "--node", "nonsense",
                          "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "node:" in out.stderr and "HOST:PORT" in out.stderr
    help_text = subprocess.run([sys.executable, "-m", "coordinator", "serve", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    assert "--discover" in help_text and "EDGESHARD_STATE_DIR" in help_text
