"""The durable job store: jobs, shards and results in one SQLite file.

The coordinator process is the only writer. One connection (``check_same_thread=False``)
sits behind a lock, so the store is thread-safe; every state change is one ``BEGIN
IMMEDIATE`` transaction, so a SIGKILL at any point leaves either all or none of it.

Durability: WAL journal with ``synchronous=FULL``. In WAL mode ``NORMAL`` already survives a
killed process, but a power cut could lose the last commits, and a commit here acknowledges
results to a node (which then forgets them) or hands out a lease; so every commit is fsynced.
Commits are per shard (tens to thousands of items), so the fsync cost is small.

Exactly once: ``results`` has ``UNIQUE(job_id, item_id)`` and rows are inserted with
``ON CONFLICT DO NOTHING`` (``INSERT OR IGNORE`` restricted to that one constraint, so a NOT NULL
violation is still an error): the first writer of an item wins and later duplicates are counted
and dropped. ``results.seq`` (AUTOINCREMENT, never reused) orders results for FetchResults,
which resumes after the last seq a client has seen, across coordinator restarts.

Shard lifecycle::

    queued --lease_next--> leased --complete (all items answered)--> done
      ^                      |
      +----------------------+  release (current attempt), requeue_node, requeue_expired,
                                recover (at start), complete with some items missing
    queued/leased --cancel--> cancelled

Each lease increments ``attempt``. Results of an older (stale) attempt are still accepted for
items nobody has answered yet: the work is valid, and it may finish a shard whose re-lease is
still running (that lease's results then all count as duplicates). Results for a cancelled or
failed job are discarded. A shard whose node reports failure (``release``) ``max_failures``
times fails its job; lost nodes and expired leases do not count as failures.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgpack
import numpy as np

from coordinator.errors import (
    InvalidJobError,
    InvalidResultError,
    JobConflictError,
    JobNotFoundError,
    ShardNotFoundError,
    StoreFullError,
    StoreUnavailableError,
)
from coordinator.jobs import spool
from coordinator.jobs.items import ItemSource
from coordinator.jobs.leases import ShardLeases, _to_lease
from coordinator.jobs.model import (
    CompleteOutcome,
    JobInfo,
    JobProgress,
    JobState,
    NextLease,
    ResultRow,
    ShardState,
)
from coordinator.jobs.results import insert_results, result_params
from coordinator.jobs.schema import migrate
from coordinator.jobs.spool import Escalation, SpoolLimits

log = logging.getLogger(__name__)

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class JobStore(ShardLeases):
    """Jobs, shards and results in SQLite; see the module docstring for the guarantees."""

    def __init__(self, path: str, max_failures: int = 3):
        if max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, got {max_failures}")
        self.path = str(path)
        self.max_failures = max_failures
        self._lock = threading.RLock()
        self.fault: str | None = None  # why writes fail, while they do (metrics, ListNodes)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                log.warning("%s: SQLite refused WAL mode (journal_mode=%s); commits are still "
                            "atomic and durable, but slower", self.path, mode)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        with self._tx() as db:
            migrate(db, self.path)

    def transaction(self):
        """A write transaction on the store's connection (for the spool queue)."""
        return self._tx()

    @property
    def lock(self) -> threading.RLock:
        """The store's lock (re-entrant); hold it for reads that must see one state."""
        return self._lock

    @property
    def db(self) -> sqlite3.Connection:
        """The store's SQLite connection (use under ``lock`` or in ``transaction``)."""
        return self._db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise self._write_fault(exc) from exc
            if self.fault is not None:
                log.info("job store %s writes again", self.path)
                self.fault = None

    def _write_fault(self, exc: sqlite3.OperationalError) -> Exception:
        """The domain error for a write SQLite refused; the first of a run is logged."""
        full = "full" in str(exc).lower()
        why = "disk full" if full else str(exc)
        if self.fault is None:
            log.error("job store %s cannot write: %s (%s); work waits and resumes by itself "
                      "when it can write again (logged once)", self.path, why, exc)
        self.fault = why
        if full:
            return StoreFullError(f"job store: disk full ({exc}); free space in the state "
                                  "directory, writes resume by themselves")
        return StoreUnavailableError(f"job store: cannot write ({exc}); retry later")

    def close(self) -> None:
        """Close the connection; the store is unusable afterwards."""
        with self._lock:
            self._db.close()

    # -- jobs ---------------------------------------------------------------------------------

    def create_job(self, model: str, items: ItemSource | tuple[Sequence[str] | None, np.ndarray],
                   shard_size: int, params: dict[str, Any] | None = None,
                   job_id: str | None = None, now: float | None = None) -> JobInfo:
        """Store a job and its shards (each payload once); idempotent for a given ``job_id``.

        A second call with the same ``job_id`` and the same content (model, shard size,
        params, ids, data) returns the stored job with ``existing=True``; different content
        raises JobConflictError. Items are read batch by batch inside one transaction.
        """
        if not isinstance(model, str) or not model:
            raise InvalidJobError("model: must be a non-empty model name")
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise InvalidJobError(f"shard_size: must be a positive integer, got {shard_size!r}")
        if job_id is not None and (not isinstance(job_id, str)
                                   or not JOB_ID_PATTERN.fullmatch(job_id)):
            raise InvalidJobError(f"job_id: {job_id!r} must be 1-128 characters of letters, "
                                  "digits, '_', '.' or '-', starting with a letter or digit")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise InvalidJobError(f"params: must be a map, got {type(params).__name__}")
        try:
            params_json = json.dumps(params, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidJobError(f"params: not JSON-serializable ({e})") from e
        source = items if isinstance(items, ItemSource) else ItemSource.from_arrays(*items)
        now = time.time() if now is None else now
        digest = hashlib.sha256(json.dumps(
            [model, shard_size, params_json, source.dtype.str, list(source.item_shape)]
        ).encode())

        with self._tx() as db:
            if job_id is not None:
                row = db.execute("SELECT model, state, total_items, created_at, digest FROM jobs "
                                 "WHERE job_id = ?", (job_id,)).fetchone()
                if row is not None:
                    for ids, array in source.batches(shard_size):
                        _digest_batch(digest, ids, array)
                    if digest.hexdigest() != row[4]:
                        raise JobConflictError(
                            f"job_id {job_id!r} already names a job with different content; "
                            "use a new job id for a different job")
                    shards = db.execute("SELECT COUNT(*) FROM shards WHERE job_id = ?",
                                        (job_id,)).fetchone()[0]
                    return JobInfo(job_id, row[0], row[1], row[2], shards, row[3], existing=True)
            job_id = job_id or uuid.uuid4().hex
            db.execute(
                "INSERT INTO jobs (job_id, model, state, params, shard_size, total_items, dtype, "
                "item_shape, digest, created_at) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, '', ?)",
                (job_id, model, params_json, shard_size, len(source), source.dtype.str,
                 json.dumps(list(source.item_shape)), now))
            shards = 0
            for ids, array in source.batches(shard_size):
                _digest_batch(digest, ids, array)
                db.execute(
                    "INSERT INTO shards (job_id, idx, state, item_count, item_ids, payload) "
                    "VALUES (?, ?, 'queued', ?, ?, ?)",
                    (job_id, shards, len(ids), msgpack.packb(ids), _npy_bytes(array)))
                shards += 1
            db.execute("UPDATE jobs SET digest = ? WHERE job_id = ?", (digest.hexdigest(), job_id))
        log.info("created job %s: model %s, %d items in %d shards", job_id, model, len(source),
                 shards)
        return JobInfo(job_id, model, JobState.RUNNING, len(source), shards, now)

    def progress(self, job_id: str) -> JobProgress:
        """The job's state and counters; JobNotFoundError if there is no such job."""
        with self._lock:
            rows = self._progress_rows("WHERE j.job_id = ?", (job_id,))
        if not rows:
            raise JobNotFoundError(f"no job {job_id!r}")
        return rows[0]

    def list_jobs(self, state: str | None = None) -> list[JobProgress]:
        """Every job (or those in ``state``), oldest first."""
        with self._lock:
            if state is None:
                return self._progress_rows("", ())
            return self._progress_rows("WHERE j.state = ?", (state,))

    def _progress_rows(self, where: str, args: tuple) -> list[JobProgress]:
        rows = self._db.execute(
            "SELECT j.job_id, j.model, j.state, j.total_items, j.done_items, "
            "(SELECT COUNT(*) FROM shards s WHERE s.job_id = j.job_id), "
            "(SELECT COUNT(*) FROM shards s WHERE s.job_id = j.job_id AND s.state = 'done'), "
            "(SELECT COUNT(*) FROM shards s WHERE s.job_id = j.job_id AND s.state = 'leased'), "
            "j.created_at, j.finished_at, j.error, "
            "(SELECT COUNT(*) FROM spool p WHERE p.job_id = j.job_id), "
            "j.cloud_items, j.degraded_items, j.requeued_shards, j.duplicate_results "
            f"FROM jobs j {where} ORDER BY j.num",
            args).fetchall()
        return [JobProgress(*row) for row in rows]

    def cancel(self, job_id: str, now: float | None = None) -> JobProgress:
        """Cancel a running job: its queued and leased shards become ``cancelled``.

        Results that leased nodes send later are discarded (the client asked to stop; it
        should not see the result count grow afterwards). Results already written stay
        fetchable. Cancelling a finished job changes nothing.
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            state = self._job_state(db, job_id)
            if state == JobState.RUNNING:
                db.execute("UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE job_id = ?",
                           (now, job_id))
                db.execute("UPDATE shards SET state = 'cancelled', lease_expires = NULL "
                           "WHERE job_id = ? AND state IN ('queued', 'leased')", (job_id,))
                db.execute("DELETE FROM spool WHERE job_id = ?", (job_id,))
                log.info("cancelled job %s", job_id)
        return self.progress(job_id)

    @staticmethod
    def _job_state(db: sqlite3.Connection, job_id: str) -> str:
        row = db.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return row[0]

    # -- results ------------------------------------------------------------------------------

    def shares(self, job_id: str) -> dict[str, int]:
        """How many of the job's results each node produced (``results.node``)."""
        with self._lock:
            self._job_state(self._db, job_id)
            return dict(self._db.execute("SELECT node, items FROM job_nodes WHERE job_id = ? "
                                         "ORDER BY node", (job_id,)).fetchall())

    def complete(self, shard_id: int, attempt: int, results: Sequence[ResultRow],
                 now: float | None = None, escalations: Sequence[Escalation] = (),
                 spool_limits: SpoolLimits | None = None,
                 then_lease: NextLease | None = None) -> CompleteOutcome:
        """Write an attempt's results; each item keeps exactly one result (first writer wins).

        Any attempt that was leased, current or stale, may answer items not yet answered. The
        shard becomes ``done`` once each of its items has a result or waits in the spool.
        If the current attempt leaves items unanswered, the shard goes back to ``queued`` so
        that they are retried. When all items of the job have results the job becomes
        ``done``. ``escalations`` (items the cloud could not answer yet) are spooled in the
        same transaction, within ``spool_limits``; those that do not fit get their
        degraded edge answer as final result. With ``then_lease``, the same transaction
        also leases the node its next shard (``CompleteOutcome.next_lease``): one commit,
        one fsync, where two were.
        """
        now = time.time() if now is None else now
        rows = [result_params(r) for r in results]
        with self._tx() as db:
            row = db.execute(
                "SELECT s.job_id, s.state, s.attempt, s.item_count, s.item_ids, j.state, j.model "
                "FROM shards s JOIN jobs j ON j.job_id = s.job_id WHERE s.shard_id = ?",
                (shard_id,)).fetchone()
            if row is None:
                raise ShardNotFoundError(f"no shard {shard_id}")
            job_id, shard_state, current, item_count, item_ids, job_state, model = row
            if isinstance(attempt, bool) or not isinstance(attempt, int) \
                    or not 1 <= attempt <= current:
                raise InvalidResultError(f"shard {shard_id}: attempt {attempt!r} was never "
                                         f"leased (current attempt {current})")
            members = set(msgpack.unpackb(item_ids))
            for item in [r.item_id for r in results] + [e.item_id for e in escalations]:
                if item not in members:
                    raise InvalidResultError(
                        f"shard {shard_id}: item {item!r} is not in this shard")
            stale = attempt < current
            if (job_state in (JobState.CANCELLED, JobState.FAILED)
                    or shard_state == ShardState.CANCELLED):
                return CompleteOutcome(0, 0, stale, discarded=len(rows) + len(escalations))
            answered_now = {r[0] for r in db.execute(
                "SELECT item_id FROM results WHERE shard_id = ?", (shard_id,))}
            fresh = [e for e in escalations if e.item_id not in answered_now]
            spooled, overflow = spool.admit(db, job_id, shard_id, model, fresh,
                                            spool_limits or SpoolLimits(), now)
            rows += [result_params(r) for r in overflow]
            accepted = insert_results(db, job_id, shard_id, attempt, rows, now)
            answered = db.execute("SELECT COUNT(*) FROM results WHERE shard_id = ?",
                                  (shard_id,)).fetchone()[0]
            if answered + spool.pending_for_shard(db, shard_id) == item_count:
                db.execute("UPDATE shards SET state = 'done', lease_expires = NULL "
                           "WHERE shard_id = ?", (shard_id,))
            elif not stale and shard_state == "leased":
                log.warning("shard %d attempt %d answered %d of %d items; re-queued", shard_id,
                            attempt, answered, item_count)
                db.execute("UPDATE shards SET state = 'queued', node_id = NULL, "
                           "lease_expires = NULL, last_error = 'partial results' "
                           "WHERE shard_id = ?", (shard_id,))
                db.execute("UPDATE jobs SET requeued_shards = requeued_shards + 1 "
                           "WHERE job_id = ?", (job_id,))
            if len(rows) > accepted:
                db.execute("UPDATE jobs SET duplicate_results = duplicate_results + ? "
                           "WHERE job_id = ?", (len(rows) - accepted, job_id))
            taken = (self._take_next(db, then_lease.node_id, now + then_lease.lease_seconds,
                                     then_lease.models) if then_lease is not None else None)
        return CompleteOutcome(accepted, len(rows) - accepted, stale, spooled=spooled,
                               overflow=len(overflow),
                               next_lease=_to_lease(taken, then_lease.node_id)
                               if taken is not None else None)

    def results(self, job_id: str, after_seq: int = 0, limit: int | None = None
                ) -> list[ResultRow]:
        """The job's results with ``seq > after_seq``, in seq order (at most ``limit``)."""
        with self._lock:
            self._job_state(self._db, job_id)
            rows = self._db.execute(
                "SELECT item_id, label, confidence, tier, node, model_version, extra, seq "
                "FROM results WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, after_seq, -1 if limit is None else limit)).fetchall()
        return [ResultRow(i, label, conf, tier, node, version, json.loads(extra), seq)
                for i, label, conf, tier, node, version, extra, seq in rows]


def _digest_batch(digest: Any, ids: list[str], array: np.ndarray) -> None:
    digest.update(msgpack.packb(ids))
    digest.update(np.ascontiguousarray(array).data)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()
