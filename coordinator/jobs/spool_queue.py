"""The spool as a queue: what the replayer takes, resolves, retries and expires.

Runs on the job store's connection and lock (``JobStore.transaction``), so every change
commits together with the results it writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from coordinator.jobs.model import ResultRow
from coordinator.jobs.results import insert_results, result_params
from coordinator.jobs.spool import SpoolEntry, select, totals
from coordinator.jobs.store import JobStore

log = logging.getLogger(__name__)


class SpoolQueue:
    """The spool's entries as the replayer and the Jobs API use them, on the job store."""

    def __init__(self, store: JobStore):
        self.store = store

    def take(self, limit: int, now: float) -> list[SpoolEntry]:
        """The oldest unexpired spool entries of running jobs (the replayer's next batch)."""
        with self.store.lock:
            return select(self.store.db, "WHERE expires_at > ? AND job_id IN "
                          "(SELECT job_id FROM jobs WHERE state = 'running')", (now,), limit)

    def pending(self, job_id: str) -> list[ResultRow]:
        """The job's items waiting for the cloud, as their degraded edge answers."""
        with self.store.lock:
            entries = select(self.store.db, "WHERE job_id = ?", (job_id,))
        return [replace(e.fallback, extra={**e.fallback.extra, "degraded": True})
                for e in entries]

    def resolve(self, answers: Sequence[tuple[int, ResultRow]], now: float | None = None) -> int:
        """The cloud answered spooled items: write their final results, drop the entries."""
        now = time.time() if now is None else now
        accepted = 0
        with self.store.transaction() as db:
            for spool_id, result in answers:
                row = db.execute("SELECT job_id, shard_id FROM spool WHERE spool_id = ?",
                                 (spool_id,)).fetchone()
                if row is None:
                    continue  # expired or cancelled meanwhile: its final result stands
                job_id, shard_id = row
                db.execute("DELETE FROM spool WHERE spool_id = ?", (spool_id,))
                accepted += insert_results(db, job_id, shard_id, 0, [result_params(result)], now)
        return accepted

    def failed(self, spool_ids: Sequence[int], error: str) -> None:
        """The cloud failed ``spool_ids``: count the attempt and note ``error``."""
        with self.store.transaction() as db:
            db.executemany("UPDATE spool SET attempts = attempts + 1, last_error = ? "
                           "WHERE spool_id = ?", [(error, i) for i in spool_ids])

    def expire(self, now: float) -> int:
        """Entries past their TTL: their degraded edge answer becomes final."""
        with self.store.transaction() as db:
            entries = select(db, "WHERE expires_at <= ?", (now,))
            for e in entries:
                db.execute("DELETE FROM spool WHERE spool_id = ?", (e.spool_id,))
                final = replace(e.fallback, extra={**e.fallback.extra, "degraded": True,
                                                   "expired": True})
                insert_results(db, e.job_id, e.shard_id, 0, [result_params(final)], now)
        if entries:
            log.warning("%d escalation(s) expired in the spool; their edge answers are final",
                        len(entries))
        return len(entries)

    def totals(self) -> tuple[int, int]:
        """(entries, payload bytes) in the spool."""
        with self.store.lock:
            return totals(self.store.db)
