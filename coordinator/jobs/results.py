"""Final results as stored: one block per write, shared by the job store and the spool queue.

A block holds the final answers a shard's attempt (or the spool) gave for several items,
column by column in one msgpack body, and the job's seq range it occupies (``first_seq``
to ``last_seq``). Seqs are per job, allocated from ``jobs.result_seq`` in the writing
transaction; that transaction holds the job's row until it commits, so a job's blocks
become visible in seq order and FetchResults can resume after any seq it delivered. That
each item gets exactly one final result is the caller's part (``shards.marks``).

The helpers run inside the caller's transaction (``coordinator.jobs.database.Tx``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import msgpack
import numpy as np

from coordinator.errors import InvalidResultError
from coordinator.jobs.database import Tx
from coordinator.jobs.model import ResultBatch, ResultRow

INSERT_BLOCK = ("INSERT INTO result_blocks (job_id, last_seq, first_seq, shard_id, attempt, node, "
                "model_version, items, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def check_batch(b: ResultBatch) -> ResultBatch:
    """``b`` with its arrays as int64 / float64 [N] and its outputs as [N, ...] arrays of an
    OIP numeric dtype; InvalidResultError naming what is wrong."""
    n = len(b.item_ids)
    if not all(type(i) is str for i in b.item_ids):
        raise InvalidResultError("results: every item_id must be a string")
    if (b.labels is None) != (b.confidences is None):
        raise InvalidResultError("results: labels and confidences come together (or neither)")
    labels = confidences = None
    if b.labels is not None:
        labels, confidences = np.asarray(b.labels), np.asarray(b.confidences)
        if labels.shape != (n,) or confidences.shape != (n,):
            raise InvalidResultError(f"results: {n} item ids but labels of shape "
                                     f"{labels.shape} and confidences of shape "
                                     f"{confidences.shape}")
        if labels.dtype.kind not in "iu":
            raise InvalidResultError(f"results: labels must be integers, got {labels.dtype}")
        if confidences.dtype.kind not in "fiu" or not np.isfinite(confidences).all():
            bad = [c for c in confidences.tolist() if not isinstance(c, int | float)
                   or not math.isfinite(c)][:1]
            raise InvalidResultError(f"results: confidence must be a finite number, got {bad}")
        labels = labels.astype(np.int64, copy=False)
        confidences = confidences.astype(np.float64, copy=False)
    outputs = None
    if b.outputs is not None:
        outputs = {}
        for name, array in b.outputs.items():
            array = np.asarray(array)
            if not isinstance(name, str) or not name:
                raise InvalidResultError("results: output names must be non-empty strings")
            if array.ndim < 1 or array.shape[0] != n:
                raise InvalidResultError(f"results: output {name!r} has shape "
                                         f"{list(array.shape)}, expected [{n}, ...]")
            if array.dtype.kind not in "biuf":
                raise InvalidResultError(f"results: output {name!r} has dtype {array.dtype}; "
                                         "a job keeps numeric outputs only")
            outputs[name] = array
    for name in ("node", "model_version"):
        if not isinstance(getattr(b, name), str):
            raise InvalidResultError(f"results: {name} must be a string")
    if not isinstance(b.tiers, str) and (len(b.tiers) != n
                                         or not all(isinstance(t, str) for t in b.tiers)):
        raise InvalidResultError("results: tiers must be one string or one per item")
    if b.extras is not None and (len(b.extras) != n
                                 or not all(isinstance(e, dict) for e in b.extras)):
        raise InvalidResultError("results: extras must be one map per item")
    return ResultBatch(list(b.item_ids), labels, confidences, b.node, b.model_version,
                       b.tiers if isinstance(b.tiers, str) else list(b.tiers),
                       None if b.extras is None else list(b.extras), outputs)


def batches_from_rows(rows: Sequence[ResultRow]) -> list[ResultBatch]:
    """One batch per (node, model version) of ``rows``, in their order; each row checked."""
    groups: dict[tuple[str, str], list[ResultRow]] = {}
    for r in rows:
        _check_row(r)
        groups.setdefault((r.node, r.model_version), []).append(r)
    return [ResultBatch([r.item_id for r in g], np.array([int(r.label) for r in g], np.int64),
                        np.array([float(r.confidence) for r in g], np.float64), node, version,
                        [r.tier for r in g], [dict(r.extra) for r in g])
            for (node, version), g in groups.items()]
# (Rows come from the spool: cascaded classifiers only, so every row has a label.)


def _check_row(r: ResultRow) -> None:
    where = f"result for item {r.item_id!r}"
    if not isinstance(r.item_id, str):
        raise InvalidResultError(f"{where}: item_id must be a string")
    if isinstance(r.label, bool) or not isinstance(r.label, int | np.integer):
        raise InvalidResultError(f"{where}: label must be an integer, got {r.label!r}")
    if (not isinstance(r.confidence, int | float | np.floating) or isinstance(r.confidence, bool)
            or not math.isfinite(r.confidence)):
        raise InvalidResultError(
            f"{where}: confidence must be a finite number, got {r.confidence!r}")
    for name in ("tier", "node", "model_version"):
        if not isinstance(getattr(r, name), str):
            raise InvalidResultError(f"{where}: {name} must be a string")
    if not isinstance(r.extra, dict):
        raise InvalidResultError(f"{where}: extra must be a map, got {type(r.extra).__name__}")


def subset(b: ResultBatch, keep: Sequence[int]) -> ResultBatch:
    """The batch's items at positions ``keep`` (in that order)."""
    if len(keep) == len(b):
        return b
    idx = np.asarray(keep, np.int64)
    return ResultBatch([b.item_ids[k] for k in keep],
                       None if b.labels is None else b.labels[idx],
                       None if b.confidences is None else b.confidences[idx],
                       b.node, b.model_version,
                       b.tiers if isinstance(b.tiers, str) else [b.tiers[k] for k in keep],
                       None if b.extras is None else [b.extras[k] for k in keep],
                       None if b.outputs is None else {name: a[idx]
                                                       for name, a in b.outputs.items()})


def encode_body(b: ResultBatch) -> bytes:
    """The block body: msgpack of ids, labels (<i8 bytes, or nil), confidences (<f8 bytes,
    or nil), tiers, extras and, when the batch has outputs, a sixth column: one
    ``[name, dtype str, item shape, raw bytes of [N, ...item shape]]`` per output.
    InvalidResultError when an extra holds a value msgpack cannot store."""
    columns = [b.item_ids,
               None if b.labels is None else b.labels.astype("<i8").tobytes(),
               None if b.confidences is None else b.confidences.astype("<f8").tobytes(),
               b.tiers, b.extras]
    if b.outputs:
        columns.append([[name, a.dtype.newbyteorder("<").str, list(a.shape[1:]),
                         np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()]
                        for name, a in b.outputs.items()])
    try:
        return msgpack.packb(columns)
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidResultError(f"results: extra is not serializable ({e})") from e


def decode_block(first_seq: int, node: str, version: str, body: bytes) -> list[ResultRow]:
    """A stored block's results, one ``ResultRow`` per item, with their seqs (blocks of
    any version: those written before outputs existed have five columns)."""
    ids, labels, confidences, tiers, extras, *rest = msgpack.unpackb(body)
    outputs = None
    if rest:
        outputs = {name: np.frombuffer(raw, np.dtype(dtype)).reshape(len(ids), *shape)
                   for name, dtype, shape, raw in rest[0]}
    return ResultBatch(ids, None if labels is None else np.frombuffer(labels, "<i8"),
                       None if confidences is None else np.frombuffer(confidences, "<f8"),
                       node, version, tiers, extras, outputs).rows(first_seq)


def write_blocks(tx: Tx, job_id: str, shard_id: int, attempt: int,
                 blocks: Sequence[ResultBatch], now: float, duplicates: int = 0,
                 requeued: int = 0) -> None:
    """Store ``blocks`` (items that had no final result) as one block each and count them
    on the job (done, cloud, degraded, ``duplicates`` dropped, shards ``requeued``) and per
    node; finish the job when every item has its result.

    Call it last in the transaction: it locks the job's row (every writer of the job's
    results waits for it), so the lock is held only until the commit.
    """
    blocks = [b for b in blocks if len(b)]
    n = sum(len(b) for b in blocks)
    if not (n or duplicates or requeued):
        return
    bodies = [encode_body(b) for b in blocks]
    cloud = sum(b.item_tiers().count("cloud") for b in blocks)
    degraded = sum(bool(e.get("degraded")) for b in blocks for e in b.extras or ())
    counts: Counter[str] = Counter()
    for b in blocks:
        counts[b.node] += len(b)
    tx.executemany("INSERT INTO job_nodes (job_id, node, items) VALUES (?, ?, ?) ON CONFLICT "
                   "(job_id, node) DO UPDATE SET items = job_nodes.items + excluded.items",
                   [(job_id, node, k) for node, k in sorted(counts.items())])
    last = tx.execute(
        "UPDATE jobs SET result_seq = result_seq + ?, done_items = done_items + ?, "
        "cloud_items = cloud_items + ?, degraded_items = degraded_items + ?, "
        "duplicate_results = duplicate_results + ?, requeued_shards = requeued_shards + ?, "
        "state = CASE WHEN state = 'running' AND done_items + ? = total_items "
        "THEN 'done' ELSE state END, "
        "finished_at = CASE WHEN state = 'running' AND done_items + ? = total_items "
        "THEN ? ELSE finished_at END "
        "WHERE job_id = ? RETURNING result_seq",
        (n, n, cloud, degraded, duplicates, requeued, n, n, now, job_id)).fetchone()[0]
    first = last - n + 1
    for b, body in zip(blocks, bodies, strict=True):
        tx.execute(INSERT_BLOCK, (job_id, first + len(b) - 1, first, shard_id, attempt,
                                  b.node, b.model_version, len(b), body))
        first += len(b)
