"""The job store on PostgreSQL: several coordinator replicas share one database.

Connections come from a psycopg 3 pool (``psycopg_pool.ConnectionPool``); each write is
one transaction at PostgreSQL's default isolation (READ COMMITTED) whose rows are locked
explicitly (``Database.lock_row``, ``skip_locked``), in the order that
``coordinator.jobs.database`` gives, so replicas do not deadlock in normal operation; a
transaction PostgreSQL aborts anyway (deadlock detected, serialization failure) is run
again, up to ``RETRIES`` times.

Singleton duties (lease sweeper, spool replayer, rebalancer) are owned through
session-level advisory locks on one dedicated connection (``Duties``): when the owning
process dies its connection closes, the lock is released, and another replica takes the
duty at its next check.

Errors: a full disk (SQLSTATE 53100) raises ``StoreFullError``; a lost or refused
connection, or no free connection within ``pool_timeout_s``, raises
``StoreUnavailableError``; both are logged once per run of failures.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import zlib
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from coordinator.errors import CoordinatorError
from coordinator.jobs.database import Database

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRIES = 5
RECONNECT_ROUND_S = 4.0  # see ConnectionPool(reconnect_timeout=...) below


@functools.lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """The statement with psycopg's placeholders (the store's SQL never holds ``%``)."""
    return sql.replace("?", "%s")


class _Tx:
    """A transaction on one pooled connection, with ``?`` placeholders."""

    __slots__ = ("conn", "sent")

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.sent = False  # has a statement reached the server (then a retry is unsafe)

    def execute(self, sql: str, args: tuple | list = ()) -> psycopg.Cursor:
        cur = self.conn.execute(_pg(sql), args or None)
        self.sent = True
        return cur

    def executemany(self, sql: str, rows: list) -> psycopg.Cursor:
        cur = self.conn.cursor()
        cur.executemany(_pg(sql), rows)
        self.sent = True
        return cur


class PostgresDatabase(Database):
    """A PostgreSQL database at ``url`` (``postgresql://user@host:port/dbname``)."""

    dialect = "postgresql"
    lock_row = " FOR UPDATE"
    lock_joined = " FOR UPDATE OF s"
    clock = "EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    shared = True

    def __init__(self, url: str, max_connections: int = 16, pool_timeout_s: float = 5.0):
        super().__init__()
        self.url = url
        self.location = _redact(url)
        try:  # one plain connection first: a wrong address or password fails at once, saying why
            psycopg.connect(url, connect_timeout=max(1, round(pool_timeout_s))).close()
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise CoordinatorError(
                f"state_url: cannot connect to PostgreSQL at {self.location}: {reason}; check "
                "that the server runs, the address, the database and the credentials") from exc
        # reconnect_timeout: the pool retries a lost server with a back-off that doubles
        # from 1 s for as long as this; past it, the next call starts a new round at once.
        # Its default (300 s) let a store come back up to minutes after its server did.
        self.pool = ConnectionPool(url, min_size=1, max_size=max_connections,
                                   timeout=pool_timeout_s, open=False, name="edgeshard-store",
                                   reconnect_timeout=RECONNECT_ROUND_S,
                                   kwargs={"autocommit": False, "connect_timeout": 3})
        # The pool warns at every failed reconnection (many lines a second while the server
        # is away); the store logs the fault once, and its return.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        self.duties = Duties(url)
        self.pool.open(wait=False)
        try:
            self.pool.wait(timeout=pool_timeout_s)
        except PoolTimeout as exc:
            self.pool.close()
            raise CoordinatorError(
                f"state_url: cannot connect to PostgreSQL at {self.location} within "
                f"{pool_timeout_s:g} s; check that the server runs, the address and the "
                "credentials") from exc

    def write(self, fn: Callable[[_Tx], T]) -> T:  # noqa: D102
        for attempt in range(1, RETRIES + 1):
            tx = None
            try:
                with self.pool.connection() as conn:
                    tx = _Tx(conn)
                    out = fn(tx)
                self._recovered()
                return out
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
                if attempt == RETRIES:
                    raise self._faulted(f"conflict: {exc}", False, exc) from exc
                log.info("job store transaction aborted (%s); running it again", exc)
            except pg_errors.DiskFull as exc:
                raise self._faulted(str(exc), True, exc) from exc
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if _stale(exc, tx) and attempt < RETRIES:
                    # A pooled connection the server had closed (nothing was sent): after a
                    # server restart every idle one is, so test them all before the retry.
                    self._drop_broken()
                    continue
                raise self._faulted(str(exc), False, exc) from exc
        raise AssertionError("unreachable")

    def read(self, fn: Callable[[_Tx], T]) -> T:  # noqa: D102
        for attempt in range(1, RETRIES + 1):
            try:
                with self.pool.connection() as conn:
                    return fn(_Tx(conn))
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if isinstance(exc, PoolTimeout) or attempt == RETRIES:
                    raise self._faulted(str(exc), False, exc) from exc
                # reads are safe to run again: on a fresh connection (the pool drops the
                # broken one) the server may well be back
                self._drop_broken()
        raise AssertionError("unreachable")

    def _drop_broken(self) -> None:
        """Test the pool's idle connections and replace the broken ones (after a server
        restart all of them are, and each would otherwise fail one attempt)."""
        try:
            self.pool.check()
        except Exception:  # noqa: BLE001 - the retry that follows reports what is wrong
            log.debug("checking the pool's connections failed", exc_info=True)

    def close(self) -> None:  # noqa: D102
        self.duties.close()
        self.pool.close()

    def owns(self, duty: str) -> bool:  # noqa: D102
        return self.duties.owns(duty)


class Duties:
    """Which singleton duties this process owns, through PostgreSQL advisory locks.

    ``owns(name)`` is asked before each round of a duty: it keeps a lock already held
    (checking that its connection is alive) or tries to take a free one. Locks live on
    one dedicated connection; if it breaks, every duty is lost until it is re-opened.
    """

    def __init__(self, url: str):
        self.url = url
        self._conn: psycopg.Connection | None = None
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def owns(self, name: str) -> bool:
        """True when this process holds ``name`` now (taking it if it is free)."""
        with self._lock:
            try:
                conn = self._connection()
                if name in self._held:
                    conn.execute("SELECT 1")
                    return True
                got = conn.execute("SELECT pg_try_advisory_lock(%s)",
                                   (_key(name),)).fetchone()[0]
            except psycopg.Error as exc:
                if self._held:
                    log.warning("lost singleton duties %s: %s", sorted(self._held), exc)
                self._drop()
                return False
            if got:
                self._held.add(name)
                log.info("this coordinator now runs the %s", name)
            return bool(got)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._held.clear()
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        return self._conn

    def _drop(self) -> None:
        self._held.clear()
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        """Give every duty up (closing the connection releases its locks)."""
        with self._lock:
            self._drop()


def _stale(exc: Exception, tx: _Tx | None) -> bool:
    """True when a write failed on a connection before any statement reached the server
    (a pooled connection closed by a server restart), so that running it again is safe."""
    return isinstance(exc, psycopg.OperationalError) and tx is not None and not tx.sent


def _key(name: str) -> int:
    """A stable 63-bit advisory lock key for a duty's name."""
    return zlib.crc32(f"edgeshard:{name}".encode()) | (0x5EDA << 32)


def _redact(url: str) -> str:
    """``url`` without its passwords (in the user part or as ``password=`` in the query),
    for logs and errors; a URL that does not parse keeps only its scheme and host part."""
    try:
        parts = urlsplit(url)
    except ValueError:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{'***@' if '@' in rest else ''}{rest.rpartition('@')[2]}"
    netloc = parts.netloc
    if "@" in netloc:
        creds, host = netloc.rsplit("@", 1)
        netloc = f"{creds.split(':', 1)[0]}@{host}"
    query = urlencode([(k, "***" if "password" in k.lower() else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
