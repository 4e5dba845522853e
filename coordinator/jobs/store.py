"""The durable job store: jobs, shards and results, on SQLite or PostgreSQL.

The database (``coordinator.jobs.database``): a SQLite file used by one coordinator (the
default) or a PostgreSQL database shared by several coordinator replicas. Every state
change is one transaction, so a SIGKILL at any point leaves either all or none of it; on
SQLite each commit is fsynced (a commit acknowledges results to a node, which then forgets
them, or hands out a lease).

Exactly once: each shard keeps one mark per item (``shards.marks``: open, final result, in
the spool), read and changed under the shard's row lock in the transaction that writes the
results. Only open items are written; the rest are counted as duplicates and dropped (the
first writer wins). Results are stored as blocks of many items (``coordinator.jobs.results``)
with per-job seqs, assigned in commit order: FetchResults resumes after the last seq a
client has seen, across coordinator restarts and replicas.

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
import json
import logging
import re
import time
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from coordinator.errors import (
    InvalidJobError,
    InvalidResultError,
    JobConflictError,
    ShardNotFoundError,
)
from coordinator.jobs import spool
from coordinator.jobs.database import Database, SQLiteDatabase, Tx, open_database
from coordinator.jobs.items import ItemSource
from coordinator.jobs.leases import ShardLeases, _to_lease, npy_bytes
from coordinator.jobs.model import (
    CompleteOutcome,
    JobInfo,
    JobProgress,
    JobState,
    NextLease,
    ResultBatch,
    ResultRow,
    ShardState,
)
from coordinator.jobs.queries import JobQueries
from coordinator.jobs.queries import job_state as _job_state
from coordinator.jobs.results import (
    batches_from_rows,
    check_batch,
    subset,
    write_blocks,
)
from coordinator.jobs.schema import migrate
from coordinator.jobs.schema_postgres import migrate_postgres
from coordinator.jobs.spool import Escalation, SpoolLimits

log = logging.getLogger(__name__)

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
OPEN, FINAL, SPOOLED = 0, 1, 2  # an item's mark in ``shards.marks``
SCHEMA_LOCK = zlib.crc32(b"edgeshard:schema")  # advisory lock: replicas create it once


class JobStore(ShardLeases, JobQueries):
    """Jobs, shards and results; see the module docstring for the guarantees.

    ``location``: a SQLite file path, a ``postgresql://`` URL, or an open ``Database``.
    ``replica_id`` names this process in lease rows (``shards.owner``) and ``replicas``.
    """

    def __init__(self, location: str | Path | Database, max_failures: int = 3,
                 replica_id: str | None = None):
        if max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, got {max_failures}")
        self.max_failures = max_failures
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self.database = (location if isinstance(location, Database)
                         else open_database(str(location)))
        self.path = self.database.location
        try:
            if self.database.dialect == "sqlite":
                self.database.write(lambda tx: migrate(tx, self.path))
            else:
                def create(tx: Tx) -> None:
                    tx.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
                    migrate_postgres(tx, self.path)
                self.database.write(create)
        except BaseException:
            self.database.close()
            raise

    @property
    def fault(self) -> str | None:
        """Why writes fail while they do (metrics, ListNodes), else None."""
        return self.database.fault

    @property
    def shared(self) -> bool:
        """True when other coordinator processes may use the same store (PostgreSQL)."""
        return self.database.shared

    @property
    def db(self):
        """The SQLite connection (tests only; hold ``lock``)."""
        assert isinstance(self.database, SQLiteDatabase), "SQLite only"
        return self.database.connection

    @property
    def lock(self):
        """The SQLite connection's lock (tests only)."""
        assert isinstance(self.database, SQLiteDatabase), "SQLite only"
        return self.database.lock

    def close(self) -> None:
        """Close the database; the store is unusable afterwards."""
        self.database.close()

    def owns(self, duty: str) -> bool:
        """True when this process runs the singleton ``duty`` (lease sweeper, spool
        replayer) now; on a shared store one replica does, and another takes over when it
        dies."""
        return self.database.owns(duty)

    # -- jobs ---------------------------------------------------------------------------------

    def create_job(self, model: str, items: ItemSource | tuple[Sequence[str] | None, np.ndarray],
                   shard_size: int, params: dict[str, Any] | None = None,
                   job_id: str | None = None, now: float | None = None,
                   owner: str = "") -> JobInfo:
        """Store a job and its shards (each payload once); idempotent for a given ``job_id``.

        A second call with the same ``job_id`` and the same content (model, shard size,
        params, ids, data) returns the stored job with ``existing=True`` (and its stored
        ``owner``: the caller decides whether this one may see it); different content
        raises JobConflictError. Items are read batch by batch inside one transaction.
        ``owner`` is who submits it (a token's name).
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
        header = json.dumps([model, shard_size, params_json, source.dtype.str,
                             list(source.item_shape)]).encode()

        def create(db: Tx) -> JobInfo:
            digest = hashlib.sha256(header)
            if job_id is not None:
                row = db.execute("SELECT model, state, total_items, created_at, digest, owner "
                                 "FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                if row is not None:
                    for ids, array in source.batches(shard_size):
                        _digest_batch(digest, ids, array)
                    if digest.hexdigest() != row[4]:
                        raise JobConflictError(
                            f"job_id {job_id!r} already names a job with different content; "
                            "use a new job id for a different job")
                    shards = db.execute("SELECT COUNT(*) FROM shards WHERE job_id = ?",
                                        (job_id,)).fetchone()[0]
                    return JobInfo(job_id, row[0], row[1], row[2], shards, row[3], existing=True,
                                   owner=row[5])
            new_id = job_id or uuid.uuid4().hex
            db.execute(
                "INSERT INTO jobs (job_id, model, state, params, shard_size, total_items, dtype, "
                "item_shape, digest, created_at, owner) "
                "VALUES (?, ?, 'running', ?, ?, ?, ?, ?, '', ?, ?)",
                (new_id, model, params_json, shard_size, len(source), source.dtype.str,
                 json.dumps(list(source.item_shape)), now, owner))
            shards = 0
            for ids, array in source.batches(shard_size):
                _digest_batch(digest, ids, array)
                shard_id = db.execute(
                    "INSERT INTO shards (job_id, idx, state, item_count, marks) "
                    "VALUES (?, ?, 'queued', ?, ?) RETURNING shard_id",
                    (new_id, shards, len(ids), bytes(len(ids)))).fetchone()[0]
                db.execute("INSERT INTO shard_data (shard_id, item_ids, payload) "
                           "VALUES (?, ?, ?)", (shard_id, msgpack.packb(ids), npy_bytes(array)))
                shards += 1
            db.execute("UPDATE jobs SET digest = ? WHERE job_id = ?", (digest.hexdigest(), new_id))
            return JobInfo(new_id, model, JobState.RUNNING, len(source), shards, now,
                           owner=owner)

        info = self.database.write(create)
        if not info.existing:
            log.info("created job %s: model %s, %d items in %d shards", info.job_id, model,
                     info.total_items, info.shard_count)
        return info

    def cancel(self, job_id: str, now: float | None = None) -> JobProgress:
        """Cancel a running job: its queued and leased shards become ``cancelled``.

        Results that leased nodes send later are discarded (the client asked to stop; it
        should not see the result count grow afterwards). Results already written stay
        fetchable. Cancelling a finished job changes nothing.
        """
        now = time.time() if now is None else now

        def cancel(db: Tx) -> None:
            _job_state(db, job_id)  # JobNotFoundError
            if self._end_job(db, job_id, JobState.CANCELLED.value, now):
                db.execute("DELETE FROM spool WHERE job_id = ?", (job_id,))
                log.info("cancelled job %s", job_id)

        self.database.write(cancel)
        return self.progress(job_id)

    # -- results ------------------------------------------------------------------------------

    def complete(self, shard_id: int, attempt: int, results: ResultBatch | Sequence[ResultRow],
                 now: float | None = None, escalations: Sequence[Escalation] = (),
                 spool_limits: SpoolLimits | None = None,
                 then_lease: NextLease | None = None) -> CompleteOutcome:
        """Write an attempt's results; each item keeps exactly one result (first writer wins).

        ``results`` is a ``ResultBatch`` (the job path) or ``ResultRow`` s. Any attempt that
        was leased, current or stale, may answer items not yet answered. The shard becomes
        ``done`` once each of its items has a result or waits in the spool. If the current
        attempt leaves items unanswered, the shard goes back to ``queued`` so that they are
        retried. When all items of the job have results the job becomes ``done``.
        ``escalations`` (items the cloud could not answer yet) are spooled in the same
        transaction, within ``spool_limits``; those that do not fit get their degraded edge
        answer as final result. With ``then_lease``, the same transaction also leases the
        node its next shard (``CompleteOutcome.next_lease``): one commit where two were.
        """
        now = time.time() if now is None else now
        checked = ([check_batch(results)] if isinstance(results, ResultBatch)
                   else batches_from_rows(results))
        limits = spool_limits or SpoolLimits()

        def complete(db: Tx) -> CompleteOutcome:  # may run again (PostgreSQL retries)
            batches = list(checked)
            row = db.execute(
                "SELECT s.job_id, s.state, s.attempt, s.item_count, d.item_ids, s.marks, "
                "j.state, j.model FROM shards s JOIN jobs j ON j.job_id = s.job_id "
                "JOIN shard_data d ON d.shard_id = s.shard_id "
                f"WHERE s.shard_id = ?{self.database.lock_joined}",
                (shard_id,)).fetchone()
            if row is None:
                raise ShardNotFoundError(f"no shard {shard_id}")
            job_id, shard_state, current, item_count, item_ids, marks, job_state, model = row
            if isinstance(attempt, bool) or not isinstance(attempt, int) \
                    or not 1 <= attempt <= current:
                raise InvalidResultError(f"shard {shard_id}: attempt {attempt!r} was never "
                                         f"leased (current attempt {current})")
            ids = msgpack.unpackb(item_ids)
            # The common case: one batch answering the whole shard in its order.
            whole = not escalations and len(batches) == 1 and list(batches[0].item_ids) == ids
            where = None if whole else _positions(shard_id, ids, batches, escalations)
            stale = attempt < current
            given = sum(len(b) for b in batches) + len(escalations)
            if (job_state in (JobState.CANCELLED, JobState.FAILED)
                    or shard_state == ShardState.CANCELLED):
                return CompleteOutcome(0, 0, stale, discarded=given)
            marks = bytearray(marks if marks is not None else bytes(item_count))
            if whole and not any(marks):  # every item still open: all of them are final
                marks = bytearray([FINAL]) * item_count
                blocks, spooled, overflow = batches, [], []
            else:
                where = where or _positions(shard_id, ids, batches, escalations)
                blocks, spooled, overflow = _first_writer_wins(
                    db, job_id, shard_id, model, batches, escalations, marks, where, limits,
                    now)
            accepted = sum(len(b) for b in blocks)
            duplicates = given - len(spooled) - accepted
            open_items = marks.count(OPEN)
            requeued = 0
            if not open_items:
                db.execute("UPDATE shards SET state = 'done', lease_expires = NULL, marks = ? "
                           "WHERE shard_id = ?", (bytes(marks), shard_id))
            elif not stale and shard_state == "leased":
                log.warning("shard %d attempt %d left %d of %d items unanswered; re-queued",
                            shard_id, attempt, open_items, item_count)
                db.execute("UPDATE shards SET state = 'queued', node_id = NULL, owner = NULL, "
                           "lease_expires = NULL, last_error = 'partial results', marks = ? "
                           "WHERE shard_id = ?", (bytes(marks), shard_id))
                requeued = 1
            else:
                db.execute("UPDATE shards SET marks = ? WHERE shard_id = ?",
                           (bytes(marks), shard_id))
            taken = (self._take_next(db, then_lease.node_id, now + then_lease.lease_seconds,
                                     then_lease.models) if then_lease is not None else None)
            # last: the job's row is locked from here to the commit
            write_blocks(db, job_id, shard_id, attempt, blocks, now, duplicates, requeued)
            return CompleteOutcome(accepted, duplicates, stale, spooled=len(spooled),
                                   overflow=len(overflow),
                                   next_lease=_to_lease(taken, then_lease.node_id)
                                   if taken is not None else None)

        return self.database.write(complete)


def _first_writer_wins(db: Tx, job_id: str, shard_id: int, model: str,
                       batches: list[ResultBatch], escalations: Sequence[Escalation],
                       marks: bytearray, where: dict[str, int], limits: SpoolLimits,
                       now: float) -> tuple[list[ResultBatch], list[str], list[ResultRow]]:
    """Mark, in ``marks``, the items ``batches`` answer and ``escalations`` spool, each
    only while still open (first writer wins, also within a batch); returns the blocks to
    write (``batches`` cut to what they answered first, plus degraded answers of the
    escalations the spool had no room for), the spooled ids and those overflowed."""
    fresh = [e for e in escalations if marks[where[e.item_id]] == OPEN]
    spooled, overflow = spool.admit(db, job_id, shard_id, model, fresh, limits, now)
    for item in spooled:
        marks[where[item]] = SPOOLED
    if overflow:
        batches = [*batches, *batches_from_rows(overflow)]
    blocks = []
    for b in batches:
        keep = []
        for k, item in enumerate(b.item_ids):
            if marks[where[item]] == OPEN:
                marks[where[item]] = FINAL
                keep.append(k)
        blocks.append(subset(b, keep))
    return blocks, spooled, overflow


def _positions(shard_id: int, ids: list[str], batches: Sequence[ResultBatch],
               escalations: Sequence[Escalation]) -> dict[str, int]:
    """Each answered item's position in the shard; InvalidResultError for a stranger."""
    where = {i: k for k, i in enumerate(ids)}
    for b in batches:
        for item in b.item_ids:
            if item not in where:
                raise InvalidResultError(f"shard {shard_id}: item {item!r} is not in this shard")
    for e in escalations:
        if e.item_id not in where:
            raise InvalidResultError(f"shard {shard_id}: item {e.item_id!r} is not in this shard")
    return where


def _digest_batch(digest: Any, ids: list[str], array: np.ndarray) -> None:
    digest.update(msgpack.packb(ids))
    digest.update(np.ascontiguousarray(array).data)

