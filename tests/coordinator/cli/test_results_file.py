"""The client's results files: JSON lines with small outputs inline, large ones in the
sidecar .npz, both cut back to the last checkpoint when an interrupted submit resumes."""

from __future__ import annotations

import json

import numpy as np

from coordinator.api.control_client import Record
from coordinator.cli.results_file import INLINE_MAX_ELEMENTS, ResultsFile


def record(i: int) -> Record:
    rng = np.random.default_rng(i)
    return Record(i + 1, f"item/{i}", None, None, "edge", "n1", "1", {}, outputs={
        "mask": rng.random((40, 40, 1), dtype=np.float32),  # 1600 values: sidecar
        "count": np.array([i], np.int64)})  # inline


def test_small_outputs_inline_large_ones_in_the_npz(tmp_path):
    out = tmp_path / "r.jsonl"
    f = ResultsFile(out, {})
    for i in range(3):
        f.write(record(i))
    f.checkpoint()
    f.close()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    npz = np.load(tmp_path / "r.jsonl.npz")
    assert INLINE_MAX_ELEMENTS < 40 * 40
    for i, line in enumerate(lines):
        assert "label" not in line and line["id"] == f"item/{i}"
        assert line["outputs"]["count"] == {"datatype": "INT64", "shape": [1], "data": [i]}
        mask = line["outputs"]["mask"]
        assert mask == {"datatype": "FP32", "shape": [40, 40, 1], "npz": "r.jsonl.npz",
                        "key": f"item/{i}/mask"}
        np.testing.assert_array_equal(npz[mask["key"]], record(i).outputs["mask"])


def test_a_resume_drops_what_came_after_the_checkpoint(tmp_path):
    out = tmp_path / "r.jsonl"
    f = ResultsFile(out, {})
    f.write(record(0))
    f.write(record(1))
    state = f.checkpoint()
    f.write(record(2))
    f.write(record(3))
    # killed here: members after the checkpoint, and no central directory at the end
    f._zip.fp.close()
    f._zip.fp = None  # (so that the ZipFile object, collected, writes nothing either)
    f._out.close()
    # the resume: the same records again after the checkpoint, and one more
    f = ResultsFile(out, state)
    for i in (2, 3, 4):
        f.write(record(i))
    f.checkpoint()
    f.close()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"item/{i}" for i in range(5)]
    npz = np.load(tmp_path / "r.jsonl.npz")
    assert sorted(npz.files) == sorted(f"item/{i}/mask" for i in range(5))
    for i in range(5):
        np.testing.assert_array_equal(npz[f"item/{i}/mask"], record(i).outputs["mask"])


def test_a_classifiers_line_is_unchanged():
    r = Record(1, "7", 3, 0.98765432, "edge", "n1", "1", {"label_name": "three"})
    assert json.loads(r.as_json()) == {"id": "7", "label": 3, "confidence": 0.987654,
                                       "tier": "edge", "node": "n1", "model_version": "1",
                                       "label_name": "three"}
