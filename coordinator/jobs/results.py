"""SQL helpers for result rows, shared by the job store and the spool queue.

They run inside the caller's transaction. ``UNIQUE(job_id, item_id)`` with ``ON CONFLICT
DO NOTHING`` makes the first result of an item the only one.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import Counter
from collections.abc import Sequence

import numpy as np

from coordinator.errors import InvalidResultError
from coordinator.jobs.model import ResultRow

INSERT = ("INSERT INTO results (job_id, item_id, shard_id, attempt, label, confidence, tier, "
          "node, model_version, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
          "ON CONFLICT (job_id, item_id) DO NOTHING")


def insert_results(db: sqlite3.Connection, job_id: str, shard_id: int, attempt: int,
                   rows: Sequence[tuple], now: float) -> int:
    """Insert validated result rows (an item that already has a result keeps it), count the
    accepted ones on the job and per node, and finish the job when every item has its
    result. ``rows`` come from ``result_params``; returns how many were accepted.

    The first results of a shard (the common case) go in with one ``executemany``; when
    the shard already has some, each row is inserted on its own to see which are new.
    """
    if not rows:
        return 0
    first = db.execute("SELECT 1 FROM results WHERE shard_id = ? LIMIT 1",
                       (shard_id,)).fetchone() is None
    if first and len({r[0] for r in rows}) == len(rows):
        db.executemany(INSERT, [(job_id, r[0], shard_id, attempt, *r[1:7]) for r in rows])
        taken = list(rows)
    else:
        taken = [r for r in rows
                 if db.execute(INSERT, (job_id, r[0], shard_id, attempt, *r[1:7])).rowcount]
    if taken:
        cloud = sum(r[3] == "cloud" for r in taken)
        degraded = sum(r[7] for r in taken)
        db.execute("UPDATE jobs SET done_items = done_items + ?, cloud_items = cloud_items + ?, "
                   "degraded_items = degraded_items + ? WHERE job_id = ?",
                   (len(taken), cloud, degraded, job_id))
        db.executemany("INSERT INTO job_nodes (job_id, node, items) VALUES (?, ?, ?) "
                       "ON CONFLICT (job_id, node) DO UPDATE SET items = items + excluded.items",
                       [(job_id, node, n) for node, n in Counter(r[4] for r in taken).items()])
        db.execute("UPDATE jobs SET state = 'done', finished_at = ? WHERE job_id = ? "
                   "AND done_items = total_items AND state = 'running'", (now, job_id))
    return len(taken)


def result_params(r: ResultRow) -> tuple:
    """Validate a result row and return its column values (item_id first), then whether
    it is a degraded answer (``extra["degraded"]``)."""
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
    try:
        extra = json.dumps(r.extra, sort_keys=True) if r.extra else "{}"
    except (TypeError, ValueError) as e:
        raise InvalidResultError(f"{where}: extra is not JSON-serializable ({e})") from e
    return (r.item_id, int(r.label), float(r.confidence), r.tier, r.node, r.model_version, extra,
            bool(r.extra.get("degraded")))
