"""The main job (``edge-coordinator demo``) and the coordinator's own lifecycle."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest

pytestmark = pytest.mark.timeout(180)


def demo(tmp_path, *args, env=None, **kwargs):
    """``edge-coordinator demo`` with its temporary folder under ``tmp_path``."""
    return [sys.executable, "-m", "coordinator", "demo", *args], {
        "env": {**os.environ, "TMPDIR": str(tmp_path), **(env or {})}, **kwargs}


def test_demo_kill_one_loses_and_repeats_nothing(tmp_path):
    cmd, kw = demo(tmp_path, "--kill-one", "--repeat", "4", "--online", "50")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=150, **kw)
    assert out.returncode == 0, out.stdout + out.stderr
    report = out.stdout
    assert re.search(r"^lost\s+0$", report, re.M), report
    assert re.search(r"^duplicated\s+0$", report, re.M), report
    assert re.search(r"^results\s+4000$", report, re.M), report
    assert "node-2 killed (SIGKILL) part-way" in report
    accuracy = float(re.search(r"^accuracy\s+([0-9.]+)", report, re.M).group(1))
    assert accuracy > 0.93
    assert re.search(r"online p50\s+[0-9.]+ ms, p99", report)
    # The report's throughput is the rate the progress bar ends on: the same clock.
    rate = re.search(r"^throughput\s+([0-9,]+) items/s \(4000 results in ", report, re.M)
    bar = out.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"job \[#+\] 4000/4000 100\.0% {rate[1]} items/s done", bar), bar
    # The temporary log folder it named is gone, and it says so.
    (workdir,) = re.findall(r"^logs in (\S+), removed at exit unless the demo fails", report,
                            re.M)
    assert report.rstrip().endswith(f"removed the logs in {workdir} (--workdir DIR keeps them)")
    assert not os.path.exists(workdir) and not os.listdir(tmp_path)


def test_demo_that_fails_keeps_its_logs(tmp_path):
    # A shard size the coordinator refuses makes it exit at start-up.
    cmd, kw = demo(tmp_path, "--repeat", "1", "--shard-size", "5000")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=150, **kw)
    assert out.returncode == 1
    (workdir,) = os.listdir(tmp_path)
    assert out.stderr.startswith("edge-coordinator demo: failed: coordinator exited with 2")
    assert out.stderr.rstrip().endswith(f"logs kept in {tmp_path / workdir}")
    assert "shard_size: must be in 1..4096" in (
        tmp_path / workdir / "coordinator.log").read_text()


@pytest.mark.parametrize("phase", ["calibrated on", "job "])
def test_ctrl_c_stops_the_demo_and_everything_it_started(phase, tmp_path):
    cmd, kw = demo(tmp_path, "--repeat", "50", "--online", "10", "--nodes", "2")
    # A terminal's Ctrl-C reaches the whole foreground process group.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)
    try:
        for line in proc.stdout:
            if line.startswith(phase):
                break
        ready = list(tmp_path.glob("edgeshard-demo-*/*.ready.json"))
        pids = [json.loads(p.read_text())["pid"] for p in ready]
        assert pids
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    *before, last = err.splitlines()
    assert last == ("edge-coordinator demo: interrupted; every process it started is "
                    "stopped, its logs removed")
    assert all(line.startswith("job [") for line in before), err  # progress lines only
    assert not os.listdir(tmp_path)
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


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
    out = subprocess.run([sys.executable, "-m", "coordinator", "serve", "--state-dir",
                          str(tmp_path), "--connections-per-process", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "connections_per_process: must be in 1..64, got 0" in out.stderr
    help_text = subprocess.run([sys.executable, "-m", "coordinator", "serve", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    assert "--discover" in help_text and "EDGESHARD_STATE_DIR" in help_text


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_serve_names_a_port_in_use_and_its_flag(flag, busy_port, tmp_path):
    out = subprocess.run([sys.executable, "-m", "coordinator", "serve", "--host", "127.0.0.1",
                          "--state-dir", str(tmp_path), *busy_port.flags(flag)],
                         capture_output=True, text=True, timeout=60)
    busy_port.assert_refused(out, flag)
