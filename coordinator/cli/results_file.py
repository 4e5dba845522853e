"""The results a job writes on the client: ``<output>`` (JSON lines) and, for outputs too
large to inline, a sidecar ``<output>.npz``.

One JSON line per item. A classifier's line is ``id, label, label_name, confidence, tier,
node, model_version`` (plus the cascade fields). A line of any other task (or of a job that
named outputs) adds ``outputs``, a map from output name to either

- ``{"datatype": "FP32", "shape": [896, 1], "data": [...]}``: the tensor inline, row-major
  and flat, when it has at most ``INLINE_MAX_ELEMENTS`` elements; or
- ``{"datatype": "FP32", "shape": [256, 256, 1], "npz": "results.jsonl.npz",
  "key": "17/activation_10"}``: the array in the sidecar ``.npz`` (next to the JSONL file)
  under ``key`` = ``<item id>/<output name>``, read with ``numpy.load(npz)[key]``.

Shapes are the item's (no batch dimension). The sidecar is a zip of ``.npy`` members
written as results arrive. Both files are cut back to the last checkpoint when an
interrupted ``submit`` resumes: ``checkpoint()`` closes the zip (a valid ``.npz`` on
disk), and saves a copy of its central directory in ``<output>.npz.dir``, so that a
resume can drop members written after it and put the directory back
(``ResultsFile.open``).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from coordinator.api.control_client import Record, inline_output
from protos import codec

INLINE_MAX_ELEMENTS = 1024  # larger outputs go to the sidecar .npz


def npz_path(output: Path) -> Path:
    """The sidecar of ``output``: ``<output>.npz``."""
    return output.with_name(output.name + ".npz")


def _directory_copy(output: Path) -> Path:
    return output.with_name(output.name + ".npz.dir")


class ResultsFile:
    """``output`` opened for appending results after the checkpoint ``state`` (the
    ``offset`` of the JSONL file and the sidecar's ``npz_dir_at``, from ``checkpoint``;
    empty: a new file). Not thread-safe."""

    def __init__(self, output: Path, state: dict):
        self.output = output
        self.npz = npz_path(output)
        if output.exists():
            with open(output, "r+b") as fh:
                fh.truncate(state.get("offset", 0))  # drop lines after the checkpoint
        self._restore_npz(state.get("npz_dir_at"))
        self._out = open(output, "ab")  # noqa: SIM115 - closed by close()
        self._zip: zipfile.ZipFile | None = None

    def _restore_npz(self, dir_at: int | None) -> None:
        """Put the sidecar back as it was at the checkpoint: members up to ``dir_at``,
        then the saved central directory (no sidecar: none at the checkpoint)."""
        copy = _directory_copy(self.output)
        if dir_at is None or not copy.exists():
            self.npz.unlink(missing_ok=True)
            copy.unlink(missing_ok=True)
            return
        with open(self.npz, "r+b") as fh:
            fh.truncate(dir_at)
            fh.seek(dir_at)
            fh.write(copy.read_bytes())

    def write(self, record: Record) -> None:
        """Append ``record``'s line; its large outputs go to the sidecar."""
        line = record.fields()
        if record.outputs:
            line["outputs"] = {name: self._output(record.id, name, array)
                               for name, array in record.outputs.items()}
        self._out.write(json.dumps(line).encode() + b"\n")
        self._out.flush()  # the file holds what the progress line counts

    def _output(self, item_id: str, name: str, array: np.ndarray) -> dict:
        if array.size <= INLINE_MAX_ELEMENTS:
            return inline_output(array)
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.npz, "a" if self.npz.exists() else "w",
                                        allowZip64=True)
        key = f"{item_id}/{name}"
        with self._zip.open(key + ".npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.ascontiguousarray(array),
                                      allow_pickle=False)
        return {"datatype": codec.datatype_of(array.dtype), "shape": list(array.shape),
                "npz": self.npz.name, "key": key}

    def checkpoint(self) -> dict:
        """Flush both files; the state to save for a resume (``offset``, ``npz_dir_at``)."""
        self._out.flush()
        state = {"offset": self._out.tell()}
        if self._zip is not None:
            dir_at = self._zip.start_dir  # where the members end and close() writes the
            # central directory
            self._zip.close()
            self._zip = None
            with open(self.npz, "rb") as fh:
                fh.seek(dir_at)
                directory = fh.read()
            tmp = _directory_copy(self.output).with_suffix(".tmp")
            tmp.write_bytes(directory)
            os.replace(tmp, _directory_copy(self.output))
            state["npz_dir_at"] = dir_at
        elif self.npz.exists() and _directory_copy(self.output).exists():
            state["npz_dir_at"] = os.path.getsize(self.npz) - os.path.getsize(
                _directory_copy(self.output))
        return state

    def close(self) -> None:
        """Close both files (the sidecar's central directory written)."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        self._out.close()
