"""Shard leases: how nodes take work from the job store, and how it comes back.

A mixin of ``JobStore`` (it uses the store's connection, lock and ``max_failures``);
each method is one write transaction. See ``coordinator.jobs.store`` for the shard
lifecycle these moves implement: ``lease_next`` (queued -> leased, attempt + 1),
``extend_lease``, ``release`` (a failed attempt), ``requeue_node`` (a node died or was
drained), ``requeue_expired`` (the sweeper) and ``recover`` (at start-up).
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import time
from contextlib import AbstractContextManager

import msgpack
import numpy as np

from coordinator.errors import ShardNotFoundError
from coordinator.jobs.model import Lease

log = logging.getLogger(__name__)


class ShardLeases:
    """Lease operations over the store's SQLite connection (mixed into ``JobStore``)."""

    path: str
    max_failures: int

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:  # provided by JobStore
        raise NotImplementedError

    def lease_next(self, node_id: str, lease_seconds: float, now: float,
                   models: set[str] | None = None) -> Lease | None:
        """Lease the oldest queued shard of the oldest running job whose model is in ``models``.

        ``models=None`` accepts any model; an empty set leases nothing. Returns None when no
        shard is queued. This is how idle nodes pull work.
        """
        if not node_id:
            raise ValueError("node_id must be non-empty")
        with self._tx() as db:
            taken = self._take_next(db, node_id, now + lease_seconds, models)
        return _to_lease(taken, node_id)

    @staticmethod
    def _take_next(db: sqlite3.Connection, node_id: str, expires: float,
                   models: set[str] | None) -> tuple | None:
        """Mark the next queued shard leased to ``node_id`` in the caller's transaction;
        its columns for ``_to_lease``, or None."""
        if models is not None and not models:
            return None
        where, args = "", ()
        if models is not None:
            names = sorted(models)
            where = f"AND j.model IN ({', '.join('?' * len(names))})"
            args = tuple(names)
        # Choose by the index alone, then read the one shard's blobs: selecting them in the
        # ordered query made SQLite read every queued shard's payload to sort it.
        row = db.execute(
            "SELECT s.shard_id FROM shards s JOIN jobs j ON j.job_id = s.job_id "
            f"WHERE s.state = 'queued' AND j.state = 'running' {where} "
            "ORDER BY j.num, s.idx LIMIT 1", args).fetchone()
        if row is None:
            return None
        shard_id, job_id, attempt, model, params, item_ids, payload = db.execute(
            "SELECT s.shard_id, s.job_id, s.attempt, j.model, j.params, s.item_ids, "
            "s.payload FROM shards s JOIN jobs j ON j.job_id = s.job_id "
            "WHERE s.shard_id = ?", row).fetchone()
        db.execute("UPDATE shards SET state = 'leased', attempt = ?, node_id = ?, "
                   "lease_expires = ? WHERE shard_id = ?",
                   (attempt + 1, node_id, expires, shard_id))
        return shard_id, job_id, attempt + 1, model, params, item_ids, payload, expires

    def extend_lease(self, shard_id: int, attempt: int, lease_seconds: float,
                     now: float) -> bool:
        """Push the deadline of a current lease to ``now + lease_seconds``; False if not current."""
        with self._tx() as db:
            cur = db.execute("UPDATE shards SET lease_expires = ? WHERE shard_id = ? AND "
                             "attempt = ? AND state = 'leased'",
                             (now + lease_seconds, shard_id, attempt))
            return cur.rowcount == 1

    def release(self, shard_id: int, attempt: int, reason: str,
                counts_as_failure: bool = True) -> bool:
        """An attempt failed: re-queue the shard if that attempt is current.

        Returns False (and changes nothing) for a stale attempt. The ``max_failures``-th
        failure of one shard fails its job (state ``failed``, ``error`` set, shards cancelled);
        pass ``counts_as_failure=False`` when the node, not the shard, is to blame (it became
        unreachable), so that a flapping fleet cannot fail a job.
        """
        with self._tx() as db:
            row = db.execute("SELECT job_id, failures FROM shards WHERE shard_id = ? AND "
                             "attempt = ? AND state = 'leased'", (shard_id, attempt)).fetchone()
            if row is None:
                self._shard_exists(db, shard_id)
                return False
            job_id, failures = row[0], row[1] + int(counts_as_failure)
            db.execute("UPDATE shards SET state = 'queued', node_id = NULL, lease_expires = NULL, "
                       "failures = ?, last_error = ? WHERE shard_id = ?",
                       (failures, reason, shard_id))
            if counts_as_failure and failures >= self.max_failures:
                error = f"shard {shard_id} failed {failures} times; last error: {reason}"
                db.execute("UPDATE jobs SET state = 'failed', error = ?, finished_at = ? "
                           "WHERE job_id = ? AND state = 'running'", (error, time.time(), job_id))
                db.execute("UPDATE shards SET state = 'cancelled', lease_expires = NULL "
                           "WHERE job_id = ? AND state IN ('queued', 'leased')", (job_id,))
                log.warning("job %s failed: %s", job_id, error)
            else:
                db.execute("UPDATE jobs SET requeued_shards = requeued_shards + 1 "
                           "WHERE job_id = ?", (job_id,))
                log.info("shard %d attempt %d failed (%s); re-queued", shard_id, attempt, reason)
        return True

    def requeue_node(self, node_id: str) -> int:
        """Re-queue every shard leased to ``node_id`` (dead or drained); returns the count."""
        with self._tx() as db:
            _count_requeues(db, "state = 'leased' AND node_id = ?", (node_id,))
            cur = db.execute("UPDATE shards SET state = 'queued', node_id = NULL, "
                             "lease_expires = NULL WHERE state = 'leased' AND node_id = ?",
                             (node_id,))
        if cur.rowcount:
            log.info("re-queued %d shards of node %s", cur.rowcount, node_id)
        return cur.rowcount

    def requeue_expired(self, now: float) -> list[tuple[int, str]]:
        """Re-queue leases whose deadline is at or before ``now``; returns (shard_id, node_id)."""
        with self._tx() as db:
            expired = db.execute("SELECT shard_id, node_id FROM shards WHERE state = 'leased' "
                                 "AND lease_expires <= ? ORDER BY shard_id", (now,)).fetchall()
            _count_requeues(db, "state = 'leased' AND lease_expires <= ?", (now,))
            db.executemany("UPDATE shards SET state = 'queued', node_id = NULL, "
                           "lease_expires = NULL WHERE shard_id = ?",
                           [(shard_id,) for shard_id, _ in expired])
        for shard_id, node_id in expired:
            log.info("lease of shard %d by %s expired; re-queued", shard_id, node_id)
        return [(shard_id, node_id) for shard_id, node_id in expired]

    def recover(self) -> int:
        """At coordinator start: the previous process's leases are void; re-queue them all."""
        with self._tx() as db:
            _count_requeues(db, "state = 'leased'", ())
            cur = db.execute("UPDATE shards SET state = 'queued', node_id = NULL, "
                             "lease_expires = NULL WHERE state = 'leased'")
        log.info("recovered job store %s: %d leased shards re-queued", self.path, cur.rowcount)
        return cur.rowcount

    @staticmethod
    def _shard_exists(db: sqlite3.Connection, shard_id: int) -> None:
        if db.execute("SELECT 1 FROM shards WHERE shard_id = ?", (shard_id,)).fetchone() is None:
            raise ShardNotFoundError(f"no shard {shard_id}")


def _count_requeues(db: sqlite3.Connection, where: str, args: tuple) -> None:
    """Add to each job's ``requeued_shards`` its shards matching ``where`` (run before they
    are re-queued, in the same transaction; unqualified columns are the shard's)."""
    db.execute("UPDATE jobs SET requeued_shards = requeued_shards + (SELECT COUNT(*) FROM "
               f"shards s WHERE s.job_id = jobs.job_id AND {where}) WHERE job_id IN "
               f"(SELECT job_id FROM shards WHERE {where})", args + args)


def _to_lease(taken: tuple | None, node_id: str) -> Lease | None:
    """The ``Lease`` for ``_take_next``'s columns (decoded outside the store's lock)."""
    if taken is None:
        return None
    shard_id, job_id, attempt, model, params, item_ids, payload, expires = taken
    log.debug("leased shard %d (job %s) attempt %d to %s", shard_id, job_id, attempt, node_id)
    return Lease(job_id, shard_id, attempt, model, msgpack.unpackb(item_ids),
                 np.load(io.BytesIO(payload), allow_pickle=False), json.loads(params),
                 node_id, expires)
