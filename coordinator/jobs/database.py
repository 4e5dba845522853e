"""The job store's database: one interface, two backends (SQLite and PostgreSQL).

The store's SQL is written once, with ``?`` placeholders, in the subset both engines
share; what differs sits here: how a transaction starts, which row locks exist, how
errors map to the domain's ``StoreFullError`` / ``StoreUnavailableError``, and the
schema (``coordinator.jobs.schema``).

* ``SQLiteDatabase``: one file, one connection behind a re-entrant lock (the coordinator
  process is the only writer). Every write is one ``BEGIN IMMEDIATE`` transaction, WAL
  journal, ``synchronous=FULL`` (a commit acknowledges results to a node, which then
  forgets them, or hands out a lease: each is fsynced).
* ``PostgresDatabase`` (``coordinator.jobs.postgres``): a psycopg 3 connection pool
  shared by any number of coordinator replicas; rows are locked with ``FOR UPDATE`` and
  leases taken with ``FOR UPDATE SKIP LOCKED``; a transaction aborted by a deadlock or a
  serialization failure is run again.

Lock order, so that transactions on PostgreSQL cannot deadlock each other: shard rows
first (in ``shard_id`` order when several), then the job's row.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from coordinator.errors import StoreFullError, StoreUnavailableError

log = logging.getLogger(__name__)

STORE_ERROR_PREFIX = "job store: "  # how the store's errors begin (clients look for it)

T = TypeVar("T")
FAULT_HOLD_S = 2.0  # a write fault is reported until writes succeed this long after it


class Cursor(Protocol):
    """What a statement returns on either backend."""

    rowcount: int

    def fetchone(self) -> tuple | None: ...  # noqa: D102

    def fetchall(self) -> list[tuple]: ...  # noqa: D102


class Tx(Protocol):
    """A transaction: run statements with ``?`` placeholders."""

    def execute(self, sql: str, args: tuple | list = ()) -> Cursor: ...  # noqa: D102

    def executemany(self, sql: str, rows: list) -> Any: ...  # noqa: D102


class Database:
    """A job store database: transactions, the dialect's row locks, and write faults.

    ``lock_row`` follows a ``SELECT`` of rows that the transaction will change (empty on
    SQLite, whose write transactions are exclusive), ``lock_joined`` a ``SELECT`` of a
    shard (aliased ``s``) joined to its job, locking the shard only; ``skip_locked`` the
    ``SELECT`` that picks a queued shard to lease (other replicas' picks are skipped).
    ``fault`` says why writes fail while they do (metrics, ListNodes), else None.
    """

    dialect = ""
    lock_row = ""
    lock_joined = ""
    skip_locked = ""
    location = ""
    shared = False  # True when several coordinator processes may use it at once
    clock = "(julianday('now') - 2440587.5) * 86400.0"  # SQL: the database's time, epoch s

    def __init__(self) -> None:
        self.fault: str | None = None
        self._fault_lock = threading.Lock()
        self._fault_at = 0.0

    def write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in one write transaction and commit; all or nothing."""
        raise NotImplementedError

    def read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` on a consistent view (one statement, or a read transaction)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; the database is unusable afterwards."""
        raise NotImplementedError

    def owns(self, duty: str) -> bool:
        """True when this process runs the singleton ``duty`` now: always, on a database
        of its own; on a shared one, while it holds the duty's lock."""
        return True

    def _faulted(self, why: str, full: bool, exc: Exception) -> Exception:
        """The domain error for a write the database refused; the first of a run is logged."""
        with self._fault_lock:
            first = self.fault is None
            self.fault = "disk full" if full else why
            self._fault_at = time.monotonic()
        if first:
            log.error("job store %s cannot write: %s (%s); work waits and resumes by itself "
                      "when it can write again (logged once)", self.location, self.fault, exc)
        if full:
            return StoreFullError(f"{STORE_ERROR_PREFIX}disk full ({exc}); free space for the "
                                  "store, writes resume by themselves")
        return StoreUnavailableError(f"{STORE_ERROR_PREFIX}cannot write ({exc}); retry later")

    def _recovered(self) -> None:
        """A write succeeded: the fault is over once none failed for ``FAULT_HOLD_S`` (small
        writes may fit where large ones do not, as in a nearly full disk)."""
        if self.fault is not None:
            with self._fault_lock:
                if self.fault is None or time.monotonic() - self._fault_at < FAULT_HOLD_S:
                    return
                self.fault = None
            log.info("job store %s writes again", self.location)


class SQLiteDatabase(Database):
    """The embedded default: one SQLite file used by one coordinator process."""

    dialect = "sqlite"

    def __init__(self, path: str):
        super().__init__()
        self.location = str(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.location, check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                log.warning("%s: SQLite refused WAL mode (journal_mode=%s); commits are still "
                            "atomic and durable, but slower", self.location, mode)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            self._db.close()
            raise

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection (tests and migrations; hold ``lock``)."""
        return self._db

    @property
    def lock(self) -> threading.RLock:
        """The connection's lock."""
        return self._lock

    def write(self, fn: Callable[[Tx], T]) -> T:  # noqa: D102
        db = self._db
        with self._lock:
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(db)
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise self._faulted(str(exc), "full" in str(exc).lower(), exc) from exc
        self._recovered()
        return out

    def read(self, fn: Callable[[Tx], T]) -> T:  # noqa: D102
        with self._lock:
            return fn(self._db)

    def close(self) -> None:  # noqa: D102
        with self._lock:
            self._db.close()


def open_database(location: str) -> Database:
    """The database at ``location``: a ``postgresql://`` URL, or a SQLite file path."""
    if location.startswith(("postgresql://", "postgres://")):
        from coordinator.jobs.postgres import PostgresDatabase

        return PostgresDatabase(location)
    return SQLiteDatabase(location)
