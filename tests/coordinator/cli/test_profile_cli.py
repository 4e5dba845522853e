"""``edge-coordinator profile``: writes a version's drift reference profile from the
calibration data (or --data), refuses bad arguments naming the flag."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import edgeshard_models
from edgeshard.profile import parse_profile

pytestmark = pytest.mark.timeout(120)


def profile(*args):
    return subprocess.run([sys.executable, "-m", "coordinator", "profile", *args],
                          capture_output=True, text=True, timeout=100)


def test_profile_of_the_shipped_split_is_the_shipped_profile(tmp_path, shipped_repository):
    out = profile("--model", "mnist_edge", "--out", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    assert "500 items, input uint8 x1" in out.stdout
    made = (tmp_path / "p.json").read_bytes()
    shipped = (shipped_repository / "mnist_edge" / "1" / "profile.json").read_bytes()
    assert made == shipped  # deterministic: the shipped file is this command's output
    assert parse_profile(made, "p").confidence.total == 500


def test_profile_of_own_data_at_a_running_node(tmp_path, node):
    x, y = edgeshard_models.load_holdout()
    np.savez(tmp_path / "mine.npz", x=x[:40], y=y[:40])
    out = profile("--model", "mnist_edge", "--data", str(tmp_path / "mine.npz"), "--edge",
                  node.address, "--bins", "8", "--out", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    made = parse_profile((tmp_path / "p.json").read_bytes(), "p")
    assert made.items == 40 and len(made.input.histogram.counts) == 8
    assert "mine.npz" in made.source


@pytest.mark.parametrize("args,message", [
    (["--version", "9"], "--version: "),
    (["--data", "missing.npz"], "--data: missing.npz does not exist"),
    (["--bins", "1", "--edge", "127.0.0.1:1"], "--bins: must be in 2..1024"),
])
def test_bad_arguments_name_the_flag(args, message):
    out = profile("--model", "mnist_edge", *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_an_unreachable_edge_server_is_named():
    out = profile("--model", "mnist_edge", "--edge", "127.0.0.1:1")
    assert out.returncode == 1 and "edge server 127.0.0.1:1: UNAVAILABLE" in out.stderr
