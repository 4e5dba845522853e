"""The admin commands (nodes, drain, undrain, jobs, cancel): help, pipes, unreachable
coordinators (issue 9, items 9 and 10)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from coordinator.cli.admin import COMMANDS
from coordinator.cli.main import main

pytestmark = pytest.mark.timeout(120)


def coordinator(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coordinator", *args], text=True,
                          timeout=60, **kwargs)


@pytest.mark.parametrize("command", ["nodes", "jobs", "drain", "undrain", "cancel"])
def test_every_admin_command_describes_itself_in_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    assert COMMANDS[command][1] in text
    assert "--coordinator" in text


def test_nodes_into_a_closed_pipe_exits_quietly(fleet):
    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written (`| head -0`)
    try:
        out = coordinator("nodes", "--coordinator", fleet.coordinator.address,
                          stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    assert out.returncode == 141, out.stderr
    assert out.stderr == ""


def test_nodes_shows_a_header_and_when_each_node_was_last_seen(fleet):
    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)
    out = coordinator("nodes", "--coordinator", fleet.coordinator.address,
                      capture_output=True)
    header, row = out.stdout.splitlines()
    assert header.split() == ["NODE", "ADDRESS", "STATE", "SOURCE", "WEIGHT", "LAT", "ms",
                              "ITEMS", "SEEN", "s", "ago", "MODELS"]
    assert row.split()[0] == "n0" and float(row.split()[7]) >= 0


def test_unreachable_coordinator_is_named_with_the_flag():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = coordinator("jobs", "--coordinator", f"127.0.0.1:{port}", capture_output=True)
    assert out.returncode == 1
    assert out.stderr.startswith("edge-coordinator jobs: UNAVAILABLE: ")
    assert out.stderr.rstrip().endswith(
        f"(is a coordinator running at 127.0.0.1:{port}? set it with --coordinator or "
        "EDGESHARD_COORDINATOR)")
    assert "Traceback" not in out.stderr


def test_a_node_address_is_not_mistaken_for_a_coordinator(node):
    out = coordinator("jobs", "--coordinator", node.address, capture_output=True)
    assert out.returncode == 1
    assert out.stderr.rstrip().endswith(f"({node.address} is not a coordinator: an edge node?)")


def test_results_prints_or_saves_a_jobs_lines_from_the_coordinator(fleet, holdout, tmp_path):
    import json

    from coordinator.jobs.items import ItemSource

    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)
    images, labels = holdout
    ids = [f"img-{i}" for i in range(40)]
    status = fleet.client.submit("mnist_edge", ItemSource.from_arrays(ids, images[:40]), 16)
    address = fleet.coordinator.address
    out = coordinator("results", status.job_id, "--follow", "--coordinator", address,
                      capture_output=True)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(ids)  # each item once
    truth = dict(zip(ids, labels[:40].tolist(), strict=True))
    assert sum(r["label"] == truth[r["id"]] for r in lines) >= 36
    saved = tmp_path / "results.jsonl"
    out = coordinator("results", status.job_id, "--output", str(saved), "--coordinator",
                      address, capture_output=True)
    assert out.returncode == 0 and out.stdout == "", out.stderr
    assert [json.loads(x) for x in saved.read_text().splitlines()] == lines
    # after the first 10 results by sequence number: the other 30
    out = coordinator("results", status.job_id, "--after-seq", "10", "--coordinator",
                      address, capture_output=True)
    assert [json.loads(x) for x in out.stdout.splitlines()] == lines[10:]


def test_results_refuses_an_unknown_job_and_bad_arguments(fleet, tmp_path):
    fleet.start_coordinator()
    address = fleet.coordinator.address
    out = coordinator("results", "no-such-job", "--output", str(tmp_path / "r.jsonl"),
                      "--coordinator", address, capture_output=True)
    assert out.returncode == 1 and "NOT_FOUND" in out.stderr and "no-such-job" in out.stderr
    assert not (tmp_path / "r.jsonl").exists()  # nothing made for an unknown job
    out = coordinator("results", "j", "--after-seq", "-1", "--coordinator", address,
                      capture_output=True)
    assert out.returncode == 2 and "--after-seq: must be >= 0" in out.stderr
    out = coordinator("results", "j", "--output", str(tmp_path / "missing" / "r.jsonl"),
                      "--coordinator", address, capture_output=True)
    assert out.returncode == 2 and "missing does not exist" in out.stderr
    out = coordinator("results", "j", "--output", str(tmp_path), "--coordinator", address,
                      capture_output=True)
    assert out.returncode == 2 and "is a directory" in out.stderr
    assert "Traceback" not in out.stderr


def test_results_of_a_running_job_says_they_are_not_all(fleet, holdout):
    import signal

    import numpy as np

    from coordinator.jobs.items import ItemSource

    fleet.start_coordinator()
    node = fleet.add_node("n0")
    fleet.wait_live(1)
    images = np.tile(holdout[0], (20, 1, 1))  # 20,000 items: seconds of work
    status = fleet.client.submit("mnist_edge", ItemSource.from_arrays(None, images), 64)
    node.process.send_signal(signal.SIGSTOP)  # the job cannot finish meanwhile
    try:
        out = coordinator("results", status.job_id, "--coordinator",
                          fleet.coordinator.address, capture_output=True)
    finally:
        node.process.send_signal(signal.SIGCONT)
    assert out.returncode == 0, out.stderr
    answered = len(out.stdout.splitlines())
    assert answered < 20_000
    assert f"job {status.job_id} is still running (" in out.stderr
    assert "--follow waits for the rest" in out.stderr
