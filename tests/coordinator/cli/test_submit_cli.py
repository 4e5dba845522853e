"""``edge-coordinator submit``: input files, JSONL output, resume without repeats."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import msgpack
import numpy as np
import pytest

import edgeshard_models

EDGE = edgeshard_models.EDGE_MODEL
pytestmark = pytest.mark.timeout(180)
PACED = ("--max-batch-delay-ms", "10")


def submit(address, *args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "coordinator", "submit", "--coordinator", address,
         "--no-progress", *args], capture_output=True, text=True, timeout=timeout)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_submit_npz_writes_one_line_per_item(fleet, holdout, tmp_path):
    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)
    images, labels = holdout
    ids = np.array([f"img-{i:04d}" for i in range(300)])
    np.savez(tmp_path / "in.npz", images=images[:300], ids=ids)
    out = submit(fleet.coordinator.address, "--model", EDGE, "--input",
                 str(tmp_path / "in.npz"), "--output", str(tmp_path / "out.jsonl"))
    assert out.returncode == 0, out.stderr
    assert "done, 300/300 results" in out.stdout
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(ids.tolist())
    assert set(rows[0]) == {"id", "label", "label_name", "confidence", "tier", "node",
                            "model_version"}
    truth = dict(zip(ids.tolist(), labels[:300].tolist(), strict=True))
    assert np.mean([truth[r["id"]] == r["label"] for r in rows]) > 0.9
    assert {r["tier"] for r in rows} == {"edge"} and {r["node"] for r in rows} == {"n0"}


def test_submit_msgpack_and_bad_inputs(fleet, holdout, tmp_path):
    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)
    images = holdout[0][:20]
    with open(tmp_path / "in.msgpack", "wb") as fh:
        for i, img in enumerate(images):
            fh.write(msgpack.packb({"id": f"m{i}", "data": img.tobytes(), "dtype": "uint8",
                                    "shape": [28, 28]}))
    ok = submit(fleet.coordinator.address, "--model", EDGE, "--input",
                str(tmp_path / "in.msgpack"), "--output", str(tmp_path / "m.jsonl"))
    assert ok.returncode == 0, ok.stderr
    assert len(read_jsonl(tmp_path / "m.jsonl")) == 20

    (tmp_path / "bad.txt").write_text("hello")
    bad = submit(fleet.coordinator.address, "--model", EDGE, "--input",
                 str(tmp_path / "bad.txt"), "--output", str(tmp_path / "b.jsonl"))
    assert bad.returncode == 2 and "bad.txt" in bad.stderr
    np.save(tmp_path / "rgb.npy", np.zeros((4, 28, 28, 3), np.uint8))
    wrong = submit(fleet.coordinator.address, "--model", EDGE, "--input",
                   str(tmp_path / "rgb.npy"), "--output", str(tmp_path / "w.jsonl"))
    assert wrong.returncode == 1 and "INVALID_ARGUMENT" in wrong.stderr  # refused at Submit
    assert "channel" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not (tmp_path / "w.jsonl.progress.json").exists()  # no job: nothing to resume
    missing = submit(fleet.coordinator.address, "--model", "nope", "--input",
                     str(tmp_path / "in.msgpack"), "--output", str(tmp_path / "x.jsonl"))
    assert missing.returncode != 0


def test_interrupted_submit_resumes_without_repeats(fleet, holdout, tmp_path):
    fleet.start_coordinator()
    fleet.add_node("n0", *PACED)
    fleet.wait_live(1)
    images = np.tile(holdout[0], (6, 1, 1))
    np.save(tmp_path / "in.npy", images)
    output = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "coordinator", "submit", "--coordinator",
           fleet.coordinator.address, "--no-progress", "--model", EDGE,
           "--input", str(tmp_path / "in.npy"), "--output", str(output)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if output.exists() and len(output.read_bytes().splitlines()) > 1000:
            break
        time.sleep(0.05)
    proc.kill()  # the client dies mid-job
    proc.wait()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    rows = read_jsonl(output)
    counts = Counter(r["id"] for r in rows)
    assert len(counts) == len(images) and max(counts.values()) == 1
