"""SQL helpers for result rows, shared by the job store and the spool queue.

They run inside the caller's transaction. ``UNIQUE(job_id, item_id)`` with ``ON CONFLICT
DO NOTHING`` makes the first result of an item the only one.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence

import numpy as np

from coordinator.errors import InvalidResultError
from coordinator.jobs.model import ResultRow


def insert_results(db: sqlite3.Connection, job_id: str, shard_id: int, attempt: int,
                   rows: Sequence[tuple], now: float) -> int:
    """Insert validated result rows (an item that already has a result keeps it), count the
    accepted ones on the job, and finish the job when every item has its result."""
    accepted = cloud = degraded = 0
    for params in rows:
        cur = db.execute(
            "INSERT INTO results (job_id, item_id, shard_id, attempt, label, confidence, "
            "tier, node, model_version, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id, item_id) DO NOTHING",
            (job_id, params[0], shard_id, attempt, *params[1:]))
        if cur.rowcount:
            accepted += 1
            cloud += params[3] == "cloud"
            degraded += bool(json.loads(params[6]).get("degraded"))
    if accepted:
        db.execute("UPDATE jobs SET done_items = done_items + ?, cloud_items = cloud_items + ?, "
                   "degraded_items = degraded_items + ? WHERE job_id = ?",
                   (accepted, cloud, degraded, job_id))
        db.execute("UPDATE jobs SET state = 'done', finished_at = ? WHERE job_id = ? "
                   "AND done_items = total_items AND state = 'running'", (now, job_id))
    return accepted


def result_params(r: ResultRow) -> tuple:
    """Validate a result row and return its column values (item_id first)."""
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
        extra = json.dumps(r.extra, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise InvalidResultError(f"{where}: extra is not JSON-serializable ({e})") from e
    return (r.item_id, int(r.label), float(r.confidence), r.tier, r.node, r.model_version, extra)
