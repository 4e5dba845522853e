"""``edge-coordinator export-examples MODEL --out FILE.npz``: the hard examples of a model
as a labelled dataset for retraining.

The examples are the model's escalated items the cloud answered and its audited ones
(``--audit``), kept by the coordinator in its job store. They are streamed from the
coordinator (any replica) in batches, and written at once to ``FILE.npz`` through a
temporary file in the same directory, so a reader never sees half a file. Arrays: ``x``
(the items as submitted), ``y`` (the cloud's labels: the training labels),
``edge_label``, ``edge_confidence``, ``cloud_confidence``, ``source`` (audit or
escalated), ``segment``, ``version`` (the edge model's) and ``id``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import grpc
import numpy as np

from protos import codec

SOURCES = ("all", "audit", "escalated")


def add_parser(sub, with_target) -> None:
    """Add ``export-examples`` to ``sub``; ``with_target`` adds ``--coordinator`` and TLS."""
    sp = with_target(sub.add_parser(
        "export-examples", help="write a model's hard examples (cloud-labelled) to an .npz",
        description="Write the escalated and audited items of MODEL that the cloud tier "
        "answered, labelled with the cloud's answers, to an .npz file for retraining: "
        "arrays x, y (cloud labels), edge_label, edge_confidence, cloud_confidence, "
        "source, segment, version, id. The coordinator keeps the newest --examples-keep "
        "per model."))
    sp.add_argument("model", metavar="MODEL", help="the edge model, e.g. mnist_edge")
    sp.add_argument("--out", required=True, type=Path, metavar="FILE.npz",
                    help="the file to write (replaced atomically)")
    sp.add_argument("--source", choices=SOURCES, default="all",
                    help="only audited or only escalated items (all)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_out(out: Path) -> str | None:
    """Why ``--out`` cannot be written, or None."""
    if out.suffix != ".npz":
        return f"--out: {out} must end in .npz"
    if out.is_dir():
        return f"--out: {out} is a directory; give a file name ending in .npz"
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        return f"--out: cannot write {out}: directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"--out: cannot write {out}: directory {parent} is not writable"
    return None


class Columns:
    """The examples received so far, column by column."""

    def __init__(self, source: str):
        self.source = source
        self.x: list[np.ndarray] = []
        self.cols: dict[str, list] = {k: [] for k in (
            "y", "edge_label", "edge_confidence", "cloud_confidence", "source", "segment",
            "version", "id")}
        self.count = 0

    def add(self, batch) -> int:
        """Add a batch (its examples of the wanted source); returns the examples in it."""
        x = codec.decode_array("items", batch.datatype, [len(batch.seq), *batch.shape],
                               batch.items)
        keep = np.array([self.source in ("all", s) for s in batch.source], dtype=bool)
        if self.x and (x.dtype != self.x[0].dtype or x.shape[1:] != self.x[0].shape[1:]):
            raise ValueError(f"the examples hold items of several kinds ({self.x[0].dtype} "
                             f"{list(self.x[0].shape[1:])} and {x.dtype} {list(x.shape[1:])}) "
                             "that cannot be one x array; export with --source to split them")
        self.x.append(np.array(x[keep]))
        for name, values in (("y", batch.cloud_label), ("edge_label", batch.edge_label),
                             ("edge_confidence", batch.edge_confidence),
                             ("cloud_confidence", batch.cloud_confidence),
                             ("source", batch.source), ("segment", batch.segment),
                             ("version", batch.version), ("id", batch.id)):
            self.cols[name].extend(v for v, k in zip(values, keep, strict=True) if k)
        self.count += int(keep.sum())
        return len(batch.seq)

    def arrays(self) -> dict[str, np.ndarray]:
        """The .npz arrays."""
        out = {"x": np.concatenate(self.x)}
        for name, dtype in (("y", np.int64), ("edge_label", np.int64),
                            ("edge_confidence", np.float32), ("cloud_confidence", np.float32),
                            ("source", str), ("segment", str), ("version", str), ("id", str)):
            out[name] = np.array(self.cols[name], dtype=dtype)
        return out


def write_npz(out: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``out`` atomically (temporary file, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(args) -> int:
    """Run ``export-examples``: 0 when written, 2 for a bad --out, 1 when the coordinator
    refuses (unknown model, no examples) or cannot be reached."""
    from coordinator.api.examples_client import ExamplesClient
    from coordinator.cli.admin import rpc_failure
    from coordinator.cli.progress import ProgressBar

    name = "edge-coordinator export-examples"
    problem = check_out(args.out)
    if problem:
        print(f"{name}: {problem}", file=sys.stderr)
        return 2
    client = ExamplesClient(args.coordinator, credentials=args.credentials, token=args.token)
    columns, bar, seen = Columns(args.source), None, 0
    try:
        for batch in client.examples(args.model):
            if bar is None and not args.no_progress and sys.stderr.isatty():
                bar = ProgressBar(batch.total, f"{args.model} examples", unit="examples")
            seen += columns.add(batch)
            if bar is not None:
                bar.update(seen)
    except grpc.RpcError as exc:
        print(f"{name}: {rpc_failure(exc, args.coordinator, client.address, args.client_tls)}",
              file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"{name}: {args.model}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
        if bar is not None:
            bar.close()
    if not columns.count:
        print(f"{name}: MODEL: {args.model} has no {args.source} examples stored "
              f"({seen} of other sources); nothing written to {args.out}", file=sys.stderr)
        return 1
    try:
        write_npz(args.out, columns.arrays())
    except OSError as exc:
        print(f"{name}: --out: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    sources = columns.cols["source"]
    print(f"wrote {columns.count} examples of {args.model} ({sources.count('audit')} audited, "
          f"{sources.count('escalated')} escalated) to {args.out}")
    return 0
