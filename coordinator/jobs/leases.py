"""Shard leases: how nodes take work from the job store, and how it comes back.

A mixin of ``JobStore`` (it uses the store's database, ``replica_id`` and
``max_failures``); each method is one write transaction. See ``coordinator.jobs.store``
for the shard lifecycle these moves implement: ``lease_next`` (queued -> leased, attempt + 1),
``extend_lease``, ``release`` (a failed attempt), ``requeue_node`` (a node died or was
drained), ``requeue_expired`` (the sweeper), ``recover`` (at start-up) and, when replicas
share the store, ``heartbeat`` / ``requeue_orphans`` (leases of a replica that died).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time

import msgpack
import numpy as np

from coordinator.errors import ShardNotFoundError
from coordinator.jobs.database import Database, Tx
from coordinator.jobs.model import Lease

log = logging.getLogger(__name__)


class ShardLeases:
    """Lease operations over the store's database (mixed into ``JobStore``).

    Every lease names the node that holds it (``node_id``) and the coordinator process
    that handed it out (``owner``, the store's ``replica_id``).
    """

    path: str
    max_failures: int
    replica_id: str
    database: Database

    def lease_next(self, node_id: str, lease_seconds: float, now: float,
                   models: set[str] | None = None) -> Lease | None:
        """Lease the oldest queued shard of the oldest running job whose model is in ``models``.

        ``models=None`` accepts any model; an empty set leases nothing. Returns None when no
        shard is queued. This is how idle nodes pull work.
        """
        if not node_id:
            raise ValueError("node_id must be non-empty")
        taken = self.database.write(
            lambda db: self._take_next(db, node_id, now + lease_seconds, models))
        return _to_lease(taken, node_id)

    def _take_next(self, db: Tx, node_id: str, expires: float,
                   models: set[str] | None) -> tuple | None:
        """Mark the next queued shard leased to ``node_id`` in the caller's transaction;
        its columns for ``_to_lease``, or None. Shards other replicas are leasing right now
        are skipped, not waited for."""
        if models is not None and not models:
            return None
        where, args = "", ()
        if models is not None:
            names = sorted(models)
            where = f"AND model IN ({', '.join('?' * len(names))})"
            args = tuple(names)
        # Jobs oldest first, then the job's first queued shard by the index alone (a query
        # ordering all queued shards by job and index sorted them all on every lease); the
        # blobs are read for the one shard taken.
        row = None
        for (job_id,) in db.execute(f"SELECT job_id FROM jobs WHERE state = 'running' {where} "
                                    "ORDER BY num", args).fetchall():
            row = db.execute("SELECT shard_id FROM shards s WHERE state = 'queued' AND "
                             f"job_id = ? ORDER BY idx LIMIT 1{self.database.skip_locked}",
                             (job_id,)).fetchone()
            if row is not None:
                break
        if row is None:
            return None
        shard_id, job_id, attempt, model, params, dtype, shape, item_ids, payload = db.execute(
            "SELECT s.shard_id, s.job_id, s.attempt, j.model, j.params, j.dtype, j.item_shape, "
            "d.item_ids, d.payload FROM shards s JOIN jobs j ON j.job_id = s.job_id "
            "JOIN shard_data d ON d.shard_id = s.shard_id "
            "WHERE s.shard_id = ?", (row[0],)).fetchone()
        db.execute("UPDATE shards SET state = 'leased', attempt = ?, node_id = ?, owner = ?, "
                   "lease_expires = ? WHERE shard_id = ?",
                   (attempt + 1, node_id, self.replica_id, expires, shard_id))
        return (shard_id, job_id, attempt + 1, model, params, item_ids, (dtype, shape, payload),
                expires)

    def extend_lease(self, shard_id: int, attempt: int, lease_seconds: float,
                     now: float) -> bool:
        """Push the deadline of a current lease to ``now + lease_seconds``; False if not current."""
        return self.database.write(lambda db: db.execute(
            "UPDATE shards SET lease_expires = ? WHERE shard_id = ? AND attempt = ? AND "
            "state = 'leased'", (now + lease_seconds, shard_id, attempt)).rowcount == 1)

    def release(self, shard_id: int, attempt: int, reason: str,
                counts_as_failure: bool = True) -> bool:
        """An attempt failed: re-queue the shard if that attempt is current.

        Returns False (and changes nothing) for a stale attempt. The ``max_failures``-th
        failure of one shard fails its job (state ``failed``, ``error`` set, shards cancelled);
        pass ``counts_as_failure=False`` when the node, not the shard, is to blame (it became
        unreachable), so that a flapping fleet cannot fail a job.
        """
        lock = self.database.lock_row

        def release(db: Tx) -> bool:
            row = db.execute("SELECT job_id, failures FROM shards WHERE shard_id = ? AND "
                             f"attempt = ? AND state = 'leased'{lock}",
                             (shard_id, attempt)).fetchone()
            if row is None:
                if db.execute("SELECT 1 FROM shards WHERE shard_id = ?",
                              (shard_id,)).fetchone() is None:
                    raise ShardNotFoundError(f"no shard {shard_id}")
                return False
            job_id, failures = row[0], row[1] + int(counts_as_failure)
            db.execute("UPDATE shards SET state = 'queued', node_id = NULL, owner = NULL, "
                       "lease_expires = NULL, failures = ?, last_error = ? WHERE shard_id = ?",
                       (failures, reason, shard_id))
            if counts_as_failure and failures >= self.max_failures:
                error = f"shard {shard_id} failed {failures} times; last error: {reason}"
                self._end_job(db, job_id, "failed", time.time(), error)
                log.warning("job %s failed: %s", job_id, error)
            else:
                db.execute("UPDATE jobs SET requeued_shards = requeued_shards + 1 "
                           "WHERE job_id = ?", (job_id,))
                log.info("shard %d attempt %d failed (%s); re-queued", shard_id, attempt, reason)
            return True

        return self.database.write(release)

    def _end_job(self, db: Tx, job_id: str, state: str, now: float,
                 error: str | None = None) -> bool:
        """Move a running job to ``state`` (``cancelled`` or ``failed``, with ``error``) and
        cancel its queued and leased shards, in the caller's transaction; False when the
        job was not running. Shard rows are locked before the job's row."""
        db.execute("SELECT shard_id FROM shards WHERE job_id = ? AND state IN ('queued', "
                   f"'leased') ORDER BY shard_id{self.database.lock_row}", (job_id,)).fetchall()
        if not db.execute("UPDATE jobs SET state = ?, error = COALESCE(?, error), "
                          "finished_at = ? WHERE job_id = ? AND state = 'running'",
                          (state, error, now, job_id)).rowcount:
            return False
        db.execute("UPDATE shards SET state = 'cancelled', lease_expires = NULL "
                   "WHERE job_id = ? AND state IN ('queued', 'leased')", (job_id,))
        return True

    def requeue_node(self, node_id: str) -> int:
        """Re-queue every shard leased to ``node_id`` (dead or drained); returns the count."""
        n = len(self._requeue("node_id = ?", (node_id,)))
        if n:
            log.info("re-queued %d shards of node %s", n, node_id)
        return n

    def requeue_expired(self, now: float) -> list[tuple[int, str]]:
        """Re-queue leases whose deadline is at or before ``now``; returns (shard_id, node_id)."""
        expired = self._requeue("lease_expires <= ?", (now,))
        for shard_id, node_id in expired:
            log.info("lease of shard %d by %s expired; re-queued", shard_id, node_id)
        return expired

    def recover(self) -> int:
        """At coordinator start: the leases this store's previous users handed out are void.

        On a store of its own (SQLite) that is every lease; on a shared one only those of
        replicas that stopped heartbeating (``requeue_orphans``): the others are working.
        """
        if self.database.shared:
            return len(self.requeue_orphans())
        n = len(self._requeue("1 = 1", ()))
        log.info("recovered job store %s: %d leased shards re-queued", self.path, n)
        return n

    def heartbeat(self, address: str) -> None:
        """Record that this replica (``replica_id``, serving at ``address``) is alive, by
        the database's clock (replicas' own clocks may disagree)."""
        clock = self.database.clock
        self.database.write(lambda db: db.execute(
            "INSERT INTO replicas (replica_id, address, started_at, seen_at) VALUES "
            f"(?, ?, {clock}, {clock}) ON CONFLICT (replica_id) DO UPDATE SET "
            "seen_at = excluded.seen_at, address = excluded.address",
            (self.replica_id, address)))

    def requeue_orphans(self, timeout_s: float = 5.0) -> list[tuple[int, str]]:
        """Re-queue leases handed out by replicas not seen for ``timeout_s`` by the
        database's clock (they died with their pullers), and forget those replicas;
        returns (shard_id, node_id)."""
        def gone(db: Tx) -> None:
            db.execute(f"DELETE FROM replicas WHERE seen_at <= {self.database.clock} - ? "
                       "AND replica_id <> ?", (timeout_s, self.replica_id))
        self.database.write(gone)
        orphans = self._requeue(
            "owner IS NOT NULL AND owner <> ? AND owner NOT IN (SELECT replica_id FROM "
            "replicas)", (self.replica_id,))
        if orphans:
            log.warning("re-queued %d shard(s) leased by coordinator replicas that stopped",
                        len(orphans))
        return orphans

    def _requeue(self, where: str, args: tuple) -> list[tuple[int, str]]:
        """Re-queue the leased shards matching ``where`` in one transaction, counting them on
        their jobs; returns (shard_id, node_id). Shard rows are locked before job rows."""
        def requeue(db: Tx) -> list[tuple[int, str]]:
            rows = db.execute(f"SELECT shard_id, node_id, job_id FROM shards WHERE state = "
                              f"'leased' AND {where} ORDER BY shard_id{self.database.lock_row}",
                              args).fetchall()
            if not rows:
                return []
            db.executemany("UPDATE shards SET state = 'queued', node_id = NULL, owner = NULL, "
                           "lease_expires = NULL WHERE shard_id = ?", [(r[0],) for r in rows])
            per_job: dict[str, int] = {}
            for _, _, job_id in rows:
                per_job[job_id] = per_job.get(job_id, 0) + 1
            db.executemany("UPDATE jobs SET requeued_shards = requeued_shards + ? "
                           "WHERE job_id = ?", [(n, j) for j, n in sorted(per_job.items())])
            return [(r[0], r[1]) for r in rows]
        return self.database.write(requeue)


def _to_lease(taken: tuple | None, node_id: str) -> Lease | None:
    """The ``Lease`` for ``_take_next``'s columns (decoded outside the store's lock)."""
    if taken is None:
        return None
    shard_id, job_id, attempt, model, params, item_ids, payload, expires = taken
    log.debug("leased shard %d (job %s) attempt %d to %s", shard_id, job_id, attempt, node_id)
    ids = msgpack.unpackb(item_ids)
    return Lease(job_id, shard_id, attempt, model, ids, npy_items(*payload, len(ids)),
                 json.loads(params), node_id, expires)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as .npy bytes (format 1.0, C order): what ``numpy.save`` writes, with the
    header made once per dtype and shape (``numpy.save`` formats it anew each time) and
    the data copied once."""
    array = np.ascontiguousarray(array)
    header = _npy_header(np.lib.format.dtype_to_descr(array.dtype), array.shape)
    return b"".join((header, array.reshape(-1).view(np.uint8)))


@functools.lru_cache(maxsize=256)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return out.getvalue()


def npy_items(dtype: str, item_shape: str, blob: bytes, count: int) -> np.ndarray:
    """The ``count`` items of a stored shard payload (.npy bytes of a C-ordered array), as a
    read-only view of ``blob``: dtype and item shape (JSON) come from the job's row, so only
    the header's length is read (``np.load`` parses the header text, on every lease)."""
    if blob[:6] != b"\x93NUMPY":
        raise ValueError("shard payload: not .npy bytes")
    start = (10 + int.from_bytes(blob[8:10], "little") if blob[6] == 1
             else 12 + int.from_bytes(blob[8:12], "little"))
    items = np.frombuffer(blob, np.dtype(dtype), offset=start)
    return items.reshape(count, *json.loads(item_shape))
