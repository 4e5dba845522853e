"""``edge-coordinator submit`` while something is missing: it says what it waits for,
shows the latest count, stops cleanly on Ctrl-C and leaves no stale sidecar (issue 9,
items 7 and 9)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import edgeshard_models

EDGE = edgeshard_models.EDGE_MODEL
pytestmark = pytest.mark.timeout(180)
UNREACHABLE_CLOUD = ("--cloud", "127.0.0.1:1", "--cascade", f"{EDGE}=mnist_cloud",
                     "--escalation", f"{EDGE}=max_prob:0.9")
PROGRESS = re.compile(r"^job (\w{8}) \[[#-]+\] (\d+)/(\d+) .*items/s ?(.*)$")


class Command:
    """A CLI process whose stderr is collected line by line while it runs."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "coordinator", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if predicate(line):
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no such line; stderr so far: {self.lines}")

    def finish(self, timeout: float = 60.0) -> tuple[int, str, list[str]]:
        out = self.proc.stdout.read()
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code, out, self.lines

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def commands():
    started: list[Command] = []

    def start(*args: str) -> Command:
        started.append(Command(*args))
        return started[-1]

    yield start
    for command in started:
        command.kill()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def submit_args(address: str, input_path, output, *extra: str) -> list[str]:
    return ["submit", "--coordinator", address, "--model", EDGE, "--input", str(input_path),
            "--output", str(output), *extra]


def test_progress_shows_the_latest_count_and_the_cloud_wait_then_ctrl_c_stops_cleanly(
        fleet, holdout, tmp_path, commands):
    fleet.start_coordinator(*UNREACHABLE_CLOUD)
    fleet.add_node("n0")
    fleet.wait_live(1)
    np.save(tmp_path / "in.npy", holdout[0][:300])
    output = tmp_path / "out.jsonl"
    cmd = commands(*submit_args(fleet.coordinator.address, tmp_path / "in.npy", output))
    waiting = cmd.wait_for(lambda line: "waiting for the cloud tier" in line)
    status = fleet.client.list_jobs()[0]
    assert status.pending_escalations > 0
    assert waiting.endswith(f"{status.pending_escalations} items waiting for the cloud tier")
    # The bar's count is the results written, not an older one it skipped drawing.
    _, done, total, _ = PROGRESS.match(waiting).groups()
    assert int(total) == 300
    assert int(done) == status.done_items == status.total_items - status.pending_escalations
    assert len(output.read_text().splitlines()) == int(done)

    cmd.proc.send_signal(signal.SIGINT)
    code, out, lines = cmd.finish()
    assert code == 130, lines
    assert not any("Traceback" in line for line in lines), lines
    assert lines[-1] == (
        f"edge-coordinator submit: interrupted; job {status.job_id} goes on at the "
        "coordinator: run the same command again to resume it, or "
        f"`edge-coordinator cancel {status.job_id}`")
    assert lines[-2].endswith(" interrupted") and PROGRESS.match(lines[-2])
    # The sidecar is kept (it resumes the job) and is up to date with the file.
    side = json.loads((tmp_path / "out.jsonl.progress.json").read_text())
    assert side["job_id"] == status.job_id
    assert side["offset"] == output.stat().st_size and side["written"] == int(done)
    assert not list(tmp_path.glob("*.tmp"))


def test_jobs_lists_pending_escalations_under_a_header(fleet, holdout, tmp_path):
    fleet.start_coordinator(*UNREACHABLE_CLOUD)
    fleet.add_node("n0")
    fleet.wait_live(1)
    np.save(tmp_path / "in.npy", holdout[0][:200])
    from coordinator.jobs.items import load_items

    job = fleet.client.submit(EDGE, load_items(tmp_path / "in.npy"), job_id="cascade-job")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = fleet.client.get(job.job_id)
        if status.done_items + status.pending_escalations == 200:
            break
        time.sleep(0.1)
    assert status.pending_escalations > 0

    def jobs(*args):
        return subprocess.run([sys.executable, "-m", "coordinator", "jobs", "--coordinator",
                               fleet.coordinator.address, *args],
                              capture_output=True, text=True, timeout=60)

    table = jobs()
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["JOB", "MODEL", "STATE", "DONE/TOTAL", "PENDING", "CLOUD",
                              "DEGRADED", "ERROR"]
    assert row.split() == ["cascade-job", EDGE, "running", f"{status.done_items}/200",
                           str(status.pending_escalations), "0", "0"]
    (doc,) = json.loads(jobs("--json").stdout)
    assert doc["pending_escalations"] == status.pending_escalations
    assert doc["cloud_answered"] == 0 and doc["degraded"] == 0 and doc["state"] == "running"
    assert doc["requeued_shards"] == 0 and doc["duplicates_discarded"] == 0
    nodes = subprocess.run([sys.executable, "-m", "coordinator", "nodes", "--coordinator",
                            fleet.coordinator.address], capture_output=True, text=True,
                           timeout=60).stdout.splitlines()
    assert nodes[0].startswith("NODE") and nodes[1].startswith("n0 ")
    assert re.fullmatch(rf"cloud tier 127\.0\.0\.1:1: \w+, {status.pending_escalations} items "
                        r"waiting in the spool; last error: .+", nodes[2]), nodes


def test_progress_says_when_no_live_node_serves_the_model(fleet, holdout, tmp_path, commands):
    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)

    def admin(*args):
        return subprocess.run([sys.executable, "-m", "coordinator", *args, "--coordinator",
                               fleet.coordinator.address],
                              capture_output=True, text=True, timeout=60)

    assert admin("drain", "n0").stdout.strip().endswith("is now draining")
    np.save(tmp_path / "in.npy", holdout[0][:500])
    output = tmp_path / "out.jsonl"
    cmd = commands(*submit_args(fleet.coordinator.address, tmp_path / "in.npy", output))
    line = cmd.wait_for(lambda line: line.endswith(f"waiting for a live node serving {EDGE}"))
    assert PROGRESS.match(line)[2] == "0"
    assert admin("undrain", "n0").returncode == 0  # the job finishes
    code, out, lines = cmd.finish(120)
    assert code == 0, lines
    assert "done, 500/500 results" in out
    assert PROGRESS.match(lines[-1])[2] == "500" and lines[-1].endswith(" done")


def test_wrong_port_says_what_it_waits_for_and_leaves_nothing(holdout, tmp_path, commands):
    np.save(tmp_path / "in.npy", holdout[0][:10])
    output = tmp_path / "out.jsonl"
    port = closed_port()
    cmd = commands(*submit_args(f"127.0.0.1:{port}", tmp_path / "in.npy", output,
                                "--retry-for", "3"))
    code, out, lines = cmd.finish()
    waiting = (f"edge-coordinator submit: waiting for the coordinator at 127.0.0.1:{port} "
               "(not reachable); retrying for up to 3 s (--retry-for)")
    assert code == 1, lines
    assert lines.count(waiting) == 1, lines
    assert any(line.endswith("coordinator unreachable, retrying") for line in lines), lines
    assert lines[-1] == (f"edge-coordinator submit: no answer from the coordinator at "
                         f"127.0.0.1:{port} (not reachable) for 3 s (--retry-for); "
                         "nothing was submitted")
    assert not output.exists() and not (tmp_path / "out.jsonl.progress.json").exists()

    # Ctrl-C while waiting: a quiet exit, still nothing left behind.
    cmd = commands(*submit_args(f"127.0.0.1:{port}", tmp_path / "in.npy", output,
                                "--no-progress"))
    cmd.wait_for(lambda line: line.startswith("edge-coordinator submit: waiting for"))
    cmd.proc.send_signal(signal.SIGINT)
    code, out, lines = cmd.finish()
    assert code == 130
    assert lines == [waiting.replace("up to 3 s", "up to 120 s"),
                     "edge-coordinator submit: interrupted; nothing was submitted"]
    assert not output.exists() and not (tmp_path / "out.jsonl.progress.json").exists()


def test_refused_submit_leaves_no_sidecar_and_the_output_untouched(fleet, holdout, tmp_path):
    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)
    np.save(tmp_path / "in.npy", holdout[0][:10])
    output = tmp_path / "out.jsonl"
    output.write_text("an earlier file\n")
    out = subprocess.run(
        [sys.executable, "-m", "coordinator", "submit", "--coordinator",
         fleet.coordinator.address, "--model", "nope", "--input", str(tmp_path / "in.npy"),
         "--output", str(output), "--no-progress"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("edge-coordinator submit: ")
    assert "no node serves 'nope'" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out.jsonl.progress.json").exists()
    assert output.read_text() == "an earlier file\n"


def test_coordinator_restart_mid_job_is_waited_for_and_nothing_repeats(fleet, holdout, tmp_path,
                                                                       commands):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fleet.start_coordinator("--port", str(port))
    fleet.add_node("n0", "--max-batch-delay-ms", "10")
    fleet.wait_live(1)
    images = np.tile(holdout[0], (6, 1, 1))
    np.save(tmp_path / "in.npy", images)
    output = tmp_path / "out.jsonl"
    cmd = commands(*submit_args(fleet.coordinator.address, tmp_path / "in.npy", output,
                                "--no-progress"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
            not output.exists() or len(output.read_bytes().splitlines()) < 500):
        time.sleep(0.05)
    fleet.coordinator.kill()  # SIGKILL: the job stays in its state dir
    cmd.wait_for(lambda line: line.startswith("edge-coordinator submit: waiting for the "
                                              f"coordinator at 127.0.0.1:{port} ("))
    fleet.start_coordinator("--port", str(port))
    code, out, lines = cmd.finish(150)
    assert code == 0, lines
    assert len([x for x in lines if "waiting for the coordinator" in x]) == 1, lines
    assert f"done, {len(images)}/{len(images)} results" in out
    ids = [json.loads(line)["id"] for line in output.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == len(images)
