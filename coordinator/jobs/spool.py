"""The escalation spool: items the cloud could not answer yet, kept durably until it can.

An escalation the cloud cannot take now (it failed, its breaker is open, the budget is
spent) is stored with its data (msgpack) and its edge answer. The item's shard counts it
as handled, so the job keeps moving; the item's FINAL result is written only when it
leaves the spool: the cloud's answer when the replayer gets one, or the edge answer
flagged ``degraded`` when the entry's TTL expires. So a results stream never changes an
answer it already delivered, and each item still gets exactly one result.

Bounds: at most ``max_items`` entries and ``max_bytes`` of payload. When full, new
escalations are not spooled: their edge answer becomes final at once, flagged
``degraded`` and ``spool_full`` (policy: keep what is queued, refuse what is new, never
block the job).

These helpers run inside the job store's transactions (``coordinator.jobs.store``), so
spooling an item and completing its shard commit together.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

import msgpack
import numpy as np

from coordinator.jobs.database import Tx
from coordinator.jobs.model import ResultRow


@dataclass(frozen=True)
class SpoolLimits:
    """Bounds of the spool: entries, payload bytes, and each entry's time to live (s)."""

    max_items: int = 100_000
    max_bytes: int = 256 * 1024 * 1024
    ttl_s: float = 24 * 3600.0

    def __post_init__(self) -> None:
        for name in ("max_items", "max_bytes", "ttl_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"spool_{name}: must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Escalation:
    """An item waiting for the cloud: its data and the edge answer to fall back on."""

    item_id: str
    data: np.ndarray
    fallback: ResultRow


@dataclass(frozen=True)
class SpoolEntry:
    """A stored escalation: ids, the item's data, its fallback answer, retry count, and
    creation and expiry times (wall-clock seconds)."""

    spool_id: int
    job_id: str
    item_id: str
    shard_id: int
    model: str
    data: np.ndarray
    fallback: ResultRow
    attempts: int
    created_at: float
    expires_at: float


def encode(e: Escalation) -> bytes:
    """The escalation as a msgpack blob (the item as .npy bytes, the fallback answer)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(e.data), allow_pickle=False)
    f = e.fallback
    return msgpack.packb({
        "data": buf.getvalue(),
        "fallback": [f.item_id, int(f.label), float(f.confidence), f.tier, f.node,
                     f.model_version, json.dumps(f.extra, sort_keys=True)],
    })


def decode(blob: bytes) -> tuple[np.ndarray, ResultRow]:
    """The item array and fallback ``ResultRow`` of a blob made by ``encode``."""
    obj = msgpack.unpackb(blob)
    data = np.load(io.BytesIO(obj["data"]), allow_pickle=False)
    item, label, conf, tier, node, version, extra = obj["fallback"]
    return data, ResultRow(item, label, conf, tier, node, version, json.loads(extra))


def admit(db: Tx, job_id: str, shard_id: int, model: str,
          escalations: Sequence[Escalation], limits: SpoolLimits,
          now: float) -> tuple[list[str], list[ResultRow]]:
    """Spool what fits; returns (the spooled item ids, final degraded results for the rest)."""
    spooled: list[str] = []
    overflow: list[ResultRow] = []
    if not escalations:
        return spooled, overflow
    items, size = totals(db)
    for e in escalations:
        blob = encode(e)
        if items + 1 > limits.max_items or size + len(blob) > limits.max_bytes:
            overflow.append(replace(e.fallback, extra={**e.fallback.extra, "degraded": True,
                                                       "spool_full": True}))
            continue
        cur = db.execute(
            "INSERT INTO spool (job_id, item_id, shard_id, model, payload, bytes, created_at, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, item_id) "
            "DO NOTHING",
            (job_id, e.item_id, shard_id, model, blob, len(blob), now, now + limits.ttl_s))
        if cur.rowcount:
            spooled.append(e.item_id)
            items += 1
            size += len(blob)
    return spooled, overflow


def totals(db: Tx) -> tuple[int, int]:
    """Spool entries and payload bytes in total."""
    count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM spool").fetchone()
    return int(count), int(size)


def select(db: Tx, where: str, args: tuple, limit: int = -1) -> list[SpoolEntry]:
    """Spool entries matching the SQL ``where`` clause, oldest first (``limit`` -1: all)."""
    rows = db.execute(
        "SELECT spool_id, job_id, item_id, shard_id, model, payload, attempts, created_at, "
        f"expires_at FROM spool {where} ORDER BY spool_id"
        + (" LIMIT ?" if limit >= 0 else ""), (*args, limit) if limit >= 0 else args).fetchall()
    out = []
    for spool_id, job_id, item_id, shard_id, model, payload, attempts, created, expires in rows:
        data, fallback = decode(payload)
        out.append(SpoolEntry(spool_id, job_id, item_id, shard_id, model, data, fallback,
                              attempts, created, expires))
    return out
