"""The admin CLI and ``submit`` given several coordinators: ``--coordinator`` repeated or
comma-separated, or ``EDGESHARD_COORDINATOR`` as a list; a dead one is passed over, and
when none answers the message names every address tried."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import edgeshard_models

EDGE = edgeshard_models.EDGE_MODEL
pytestmark = pytest.mark.timeout(180)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def coordinator(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "EDGESHARD_COORDINATOR"}
    return subprocess.run([sys.executable, "-m", "coordinator", *args], capture_output=True,
                          text=True, timeout=60, env={**environ, **(env or {})})


@pytest.fixture
def live_fleet(fleet):
    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)
    return fleet


def test_a_dead_coordinator_in_the_list_is_passed_over(live_fleet):
    dead, live = f"127.0.0.1:{closed_port()}", live_fleet.coordinator.address
    for target in (["--coordinator", f"{dead},{live}"],
                   ["--coordinator", dead, "--coordinator", live]):
        out = coordinator("nodes", "--json", *target)
        assert out.returncode == 0, out.stderr
        assert [n["node_id"] for n in json.loads(out.stdout)] == ["n0"]
    out = coordinator("jobs", env={"EDGESHARD_COORDINATOR": f"{dead}, {live}"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["JOB", "MODEL"]


def test_submit_goes_to_the_coordinator_that_answers(live_fleet, holdout, tmp_path):
    dead, live = f"127.0.0.1:{closed_port()}", live_fleet.coordinator.address
    np.save(tmp_path / "in.npy", holdout[0][:50])
    out = subprocess.run(
        [sys.executable, "-m", "coordinator", "submit", "--coordinator", f"{dead},{live}",
         "--no-progress", "--model", EDGE, "--input", str(tmp_path / "in.npy"), "--output",
         str(tmp_path / "out.jsonl")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "done, 50/50 results" in out.stdout
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 50


def test_when_no_coordinator_answers_every_address_is_named():
    first, second = f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"
    for args, env in ((["--coordinator", f"{first},{second}"], None),
                      ([], {"EDGESHARD_COORDINATOR": f"{first},{second}"})):
        out = coordinator("jobs", *args, env=env)
        assert out.returncode == 1
        assert out.stderr.startswith("edge-coordinator jobs: UNAVAILABLE: ")
        assert out.stderr.rstrip().endswith(
            f"(no coordinator answered; tried {first}, {second}: is one of them running and "
            "reachable from here? set them with --coordinator or EDGESHARD_COORDINATOR)")
        assert "Traceback" not in out.stderr


def test_submit_waits_for_any_of_the_coordinators_and_names_them(holdout, tmp_path):
    first, second = f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"
    np.save(tmp_path / "in.npy", holdout[0][:5])
    out = subprocess.run(
        [sys.executable, "-m", "coordinator", "submit", "--coordinator", first,
         "--coordinator", second, "--no-progress", "--retry-for", "3", "--model", EDGE,
         "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "out.jsonl")],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"waiting for any coordinator at {first}, {second} (not reachable)" in out.stderr
    assert f"no answer from any coordinator at {first}, {second}" in out.stderr


@pytest.mark.parametrize("value,bad", [("127.0.0.1:8000,nohost", "nohost"),
                                       ("127.0.0.1:99999", "127.0.0.1:99999")])
def test_a_bad_address_is_named_with_its_source(value, bad):
    out = coordinator("nodes", "--coordinator", value)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"edge-coordinator nodes: --coordinator: {bad!r} is not "
                                  "HOST:PORT (e.g. 127.0.0.1:8000)")
    out = coordinator("nodes", env={"EDGESHARD_COORDINATOR": value})
    assert out.returncode == 2
    assert f"EDGESHARD_COORDINATOR: {bad!r} is not HOST:PORT" in out.stderr


@pytest.mark.parametrize("value,message", [
    (" ", "no address in [' ']; give HOST:PORT"),
    (",", "no address in [',']; give HOST:PORT"),
    ("http://127.0.0.1:8000", "'http://127.0.0.1:8000': give HOST:PORT without a scheme"),
])
def test_an_empty_list_or_a_url_is_refused_in_one_line(value, message):
    out = coordinator("jobs", "--coordinator", value)
    assert out.returncode == 2
    assert f"edge-coordinator jobs: --coordinator: {message}" in out.stderr
    assert "Traceback" not in out.stderr


def test_help_says_how_to_name_several(capsys):
    from coordinator.cli.main import main

    with pytest.raises(SystemExit):
        main(["jobs", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "repeat the flag or separate the addresses with commas" in text
    assert "(env EDGESHARD_COORDINATOR, comma" in text  # argparse may break "comma-separated"
