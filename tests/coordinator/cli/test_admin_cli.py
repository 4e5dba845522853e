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
