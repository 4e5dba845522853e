"""The spool as a queue: what the replayer takes, resolves, retries and expires.

Runs in the job store's transactions, so every change commits together with the results
it writes; an item leaving the spool gets its final result under its shard's row lock
(its mark goes from spooled to final), so it is written exactly once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace

import msgpack

from coordinator.jobs.database import Tx
from coordinator.jobs.model import ResultRow
from coordinator.jobs.results import batches_from_rows, write_blocks
from coordinator.jobs.spool import SpoolEntry, select, totals
from coordinator.jobs.store import FINAL, SPOOLED, JobStore

log = logging.getLogger(__name__)


class SpoolQueue:
    """The spool's entries as the replayer and the Jobs API use them, on the job store."""

    def __init__(self, store: JobStore):
        self.store = store
        self.database = store.database

    def take(self, limit: int, now: float) -> list[SpoolEntry]:
        """The oldest unexpired spool entries of running jobs (the replayer's next batch)."""
        return self.database.read(lambda db: select(
            db, "WHERE expires_at > ? AND job_id IN (SELECT job_id FROM jobs WHERE state = "
            "'running')", (now,), limit))

    def pending(self, job_id: str) -> list[ResultRow]:
        """The job's items waiting for the cloud, as their degraded edge answers."""
        entries = self.database.read(lambda db: select(db, "WHERE job_id = ?", (job_id,)))
        return [replace(e.fallback, extra={**e.fallback.extra, "degraded": True})
                for e in entries]

    def resolve(self, answers: Sequence[tuple[int, ResultRow]], now: float | None = None) -> int:
        """The cloud answered spooled items: write their final results, drop the entries."""
        now = time.time() if now is None else now

        def resolve(db: Tx) -> int:
            accepted = 0
            ids = sorted(spool_id for spool_id, _ in answers)
            if ids:
                self._lock_shards(db, f"spool_id IN ({', '.join('?' * len(ids))})", ids)
            for spool_id, result in sorted(answers, key=lambda a: a[0]):
                row = db.execute("SELECT job_id, shard_id FROM spool WHERE spool_id = ?",
                                 (spool_id,)).fetchone()
                if row is not None:  # else expired or cancelled meanwhile: its result stands
                    accepted += _finish(db, row[0], row[1], spool_id, result, now,
                                        self.database.lock_row)
            return accepted

        return self.database.write(resolve)

    def failed(self, spool_ids: Sequence[int], error: str) -> None:
        """The cloud failed ``spool_ids``: count the attempt and note ``error``."""
        self.database.write(lambda db: db.executemany(
            "UPDATE spool SET attempts = attempts + 1, last_error = ? WHERE spool_id = ?",
            [(error, i) for i in spool_ids]))

    def expire(self, now: float) -> int:
        """Entries past their TTL: their degraded edge answer becomes final."""
        def expire(db: Tx) -> int:
            self._lock_shards(db, "expires_at <= ?", (now,))
            entries = select(db, "WHERE expires_at <= ?", (now,))
            for e in entries:
                final = replace(e.fallback, extra={**e.fallback.extra, "degraded": True,
                                                   "expired": True})
                _finish(db, e.job_id, e.shard_id, e.spool_id, final, now,
                        self.database.lock_row)
            return len(entries)

        n = self.database.write(expire)
        if n:
            log.warning("%d escalation(s) expired in the spool; their edge answers are final", n)
        return n

    def _lock_shards(self, db: Tx, where: str, args) -> None:
        """Lock the shard rows of the spool entries matching ``where``, in shard order:
        shard rows before job rows (``coordinator.jobs.database``)."""
        db.execute(f"SELECT shard_id FROM shards WHERE shard_id IN (SELECT shard_id FROM spool "
                   f"WHERE {where}) ORDER BY shard_id{self.database.lock_row}", args).fetchall()

    def totals(self) -> tuple[int, int]:
        """(entries, payload bytes) in the spool."""
        return self.database.read(totals)


def _finish(db: Tx, job_id: str, shard_id: int, spool_id: int, result: ResultRow, now: float,
            lock: str) -> int:
    """Write a spooled item's final result and drop its entry; 1 if written, else 0."""
    marks, = db.execute(f"SELECT marks FROM shards WHERE shard_id = ?{lock}",
                        (shard_id,)).fetchone()
    ids, = db.execute("SELECT item_ids FROM shard_data WHERE shard_id = ?",
                      (shard_id,)).fetchone()
    db.execute("DELETE FROM spool WHERE spool_id = ?", (spool_id,))
    marks = bytearray(marks)
    k = msgpack.unpackb(ids).index(result.item_id)
    if marks[k] != SPOOLED:
        return 0
    marks[k] = FINAL
    db.execute("UPDATE shards SET marks = ? WHERE shard_id = ?", (bytes(marks), shard_id))
    write_blocks(db, job_id, shard_id, 0, batches_from_rows([result]), now)
    return 1
