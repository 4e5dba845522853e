"""Throwaway PostgreSQL servers for tests and benchmarks: real Debian binaries, no mocks.

``PostgresServer`` runs ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/N/bin`` (the
newest N; ``bash scripts/setup_postgres.sh`` installs them) in a fresh directory, with
trust authentication for the ``postgres`` superuser, listening on 127.0.0.1 on a free TCP
port and on a Unix socket in that directory. Durability settings stay at PostgreSQL's
defaults (fsync on), so what a test sees about commits is what production sees; only
``initdb --no-sync`` skips flushing the freshly made, throwaway cluster.

``initdb`` refuses to run as root, so as root every server command runs as the ``postgres``
user (``runuser -u postgres --``; the Debian package creates that user) in a directory it
owns. ``stop()`` kills the server with ``pg_ctl -m immediate stop`` (nothing in it is
meant to survive) and removes the directory.

From a benchmark script (repository root on ``sys.path``; ``tests`` is a namespace
package)::

    from tests.postgres import PostgresServer

    with PostgresServer() as pg:
        url = pg.create_database("bench")   # postgresql://postgres@127.0.0.1:PORT/bench

Tests use the ``postgres`` / ``pg_url`` fixtures of ``tests/conftest.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

SETUP_HINT = "run bash scripts/setup_postgres.sh"
BIN_ROOT = Path("/usr/lib/postgresql")
RUN_AS = "postgres"
HOST = "127.0.0.1"

# postgresql.conf additions. Durability (fsync, synchronous_commit, full_page_writes) is
# deliberately left at the defaults.
TEST_SETTINGS: dict[str, str | int] = {
    "listen_addresses": HOST,
    # A test session holds a pool per store plus the connections of every coordinator
    # process it starts; the default 100 is too tight for the concurrency tests.
    "max_connections": 200,
}

# A Unix socket path (with "/.s.PGSQL.NNNNN") must fit in sockaddr_un.sun_path (108 bytes).
_MAX_SOCKET_DIR = 90


class PostgresNotInstalled(RuntimeError):
    """No PostgreSQL server binaries under /usr/lib/postgresql/*/bin."""


class PostgresStartError(RuntimeError):
    """initdb or the server failed; the message holds the command output and log tail."""


class PostgresServer:
    """One throwaway PostgreSQL server; ``start()`` it, ``stop()`` it (or use ``with``).

    ``bin_dir`` defaults to ``find_bin_dir()``; ``settings`` are added to (and override)
    ``TEST_SETTINGS``; ``start_timeout`` bounds each start attempt in seconds.
    """

    def __init__(self, bin_dir: str | Path | None = None, *,
                 settings: dict[str, str | int] | None = None,
                 start_timeout: float = 30.0):
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self.settings = {**TEST_SETTINGS, **(settings or {})}
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.directory: Path | None = None
        self._run_as = RUN_AS if os.geteuid() == 0 else None

    # -- discovery --------------------------------------------------------------------

    @staticmethod
    def find_bin_dir() -> Path:
        """The newest ``/usr/lib/postgresql/N/bin`` that holds ``initdb`` and ``pg_ctl``.

        Raises ``PostgresNotInstalled`` (saying how to install them) when there is none.
        """
        candidates = []
        for bin_dir in BIN_ROOT.glob("*/bin"):
            version = bin_dir.parent.name
            if (re.fullmatch(r"\d+(\.\d+)?", version)
                    and (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file()):
                candidates.append((tuple(int(x) for x in version.split(".")), bin_dir))
        if not candidates:
            raise PostgresNotInstalled(
                f"PostgreSQL is not installed (no {BIN_ROOT}/*/bin/pg_ctl): {SETUP_HINT}")
        return max(candidates)[1]

    @property
    def bin_dir(self) -> Path:
        """The directory of the server binaries in use."""
        if self._bin_dir is None:
            self._bin_dir = self.find_bin_dir()
        return self._bin_dir

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (inside ``directory``)."""
        return self._require_started() / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's Unix socket (``host=`` for libpq)."""
        return self._require_started() / "socket"

    @property
    def log_path(self) -> Path:
        """The server log."""
        return self._require_started() / "server.log"

    # -- lifecycle --------------------------------------------------------------------

    def start(self, base_dir: str | Path | None = None) -> PostgresServer:
        """Make a cluster in a new directory under ``base_dir`` and start it; returns self.

        ``base_dir`` defaults to the system temp dir. As root, a ``base_dir`` the
        ``postgres`` user cannot enter (pytest's tmp_path: its parents are 0700) is
        replaced by the system temp dir, since the server runs as that user. Waits until
        the server accepts TCP connections. A port taken between choosing and binding it
        is retried with another. Raises ``PostgresNotInstalled`` or ``PostgresStartError``.
        """
        if self.port is not None:
            raise RuntimeError(f"already started on port {self.port}")
        if self._bin_dir is None:  # fail with the install hint before making anything
            self._bin_dir = self.find_bin_dir()
        self.directory = self._make_directory(base_dir)
        try:
            self.socket_dir.mkdir(mode=0o700)
            if len(str(self.socket_dir)) > _MAX_SOCKET_DIR:
                raise PostgresStartError(
                    f"socket directory path too long for a Unix socket: {self.socket_dir}")
            self._chown(self.socket_dir)
            self._initdb()
            self._start_server()
        except BaseException:
            self._remove_directory()
            raise
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Kill the server (``pg_ctl -m immediate stop``) and remove its directory."""
        if self.directory is None:
            return
        atexit.unregister(self.stop)
        if self.port is not None and (self.data_dir / "postmaster.pid").exists():
            out = self._run([self.bin_dir / "pg_ctl", "-D", self.data_dir, "-m", "immediate",
                             "-w", "-t", "30", "stop"], check=False)
            if out.returncode != 0:
                log.warning("pg_ctl stop failed (%s): %s", out.returncode, out.stdout.strip())
        self.port = None
        self._remove_directory()

    def halt(self) -> None:
        """Stop the server (``pg_ctl -m fast stop``: sessions are cut) but keep its data,
        to be started again on the same port with ``resume``: a database outage."""
        self._require_started()
        self._run([self.bin_dir / "pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "-t",
                   "30", "stop"], check=True)

    def resume(self) -> None:
        """Start a halted server again on its port, and wait until it answers."""
        self._require_started()
        out = self._run(
            [self.bin_dir / "pg_ctl", "-D", self.data_dir, "-l", self.log_path, "-w", "-t",
             str(int(self.start_timeout)), "-o",
             f"-p {self.port} -k {shlex.quote(str(self.socket_dir))}", "start"],
            check=False, timeout=self.start_timeout + 10)
        if out.returncode != 0:
            raise PostgresStartError(f"PostgreSQL did not start again on {HOST}:{self.port}:"
                                     f"\n{out.stdout.strip()}\n{self._log_tail()}")
        self._wait_ready()

    def __enter__(self) -> PostgresServer:
        if self.port is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- databases --------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:PORT/dbname``."""
        if self.port is None:
            raise RuntimeError("the server is not started")
        return f"postgresql://{RUN_AS}@{HOST}:{self.port}/{quote(dbname, safe='')}"

    def create_database(self, name: str) -> str:
        """Create a new, empty database ``name`` and return its URL."""
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions first."""
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))

    # -- internals --------------------------------------------------------------------

    def _require_started(self) -> Path:
        if self.directory is None:
            raise RuntimeError("the server is not started")
        return self.directory

    def _make_directory(self, base_dir: str | Path | None) -> Path:
        if base_dir is not None and self._run_as is not None and not self._reachable(base_dir):
            log.info("%s cannot enter %s: making the PostgreSQL directory in %s instead",
                     self._run_as, base_dir, tempfile.gettempdir())
            base_dir = None
        directory = Path(tempfile.mkdtemp(prefix="pg-", dir=base_dir))
        self._chown(directory)
        return directory

    def _reachable(self, path: str | Path) -> bool:
        out = self._run(["test", "-x", Path(path).resolve()], check=False, cwd="/")
        return out.returncode == 0

    def _remove_directory(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            user = pwd.getpwnam(self._run_as)
            os.chown(path, user.pw_uid, user.pw_gid)

    def _run(self, argv: list, *, check: bool = True, timeout: float = 60.0,
             cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run a command (as the postgres user when we are root); output in ``stdout``."""
        argv = [str(a) for a in argv]
        if self._run_as is not None:
            try:
                pwd.getpwnam(self._run_as)
            except KeyError:
                raise PostgresNotInstalled(
                    f"running as root needs the {self._run_as!r} user, which Debian's "
                    f"postgresql package creates: {SETUP_HINT}") from None
            argv = ["runuser", "-u", self._run_as, "--", *argv]
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=timeout, cwd=cwd or self.directory,
                             check=False)
        if check and out.returncode != 0:
            raise PostgresStartError(
                f"{shlex.join(argv)} exited {out.returncode}:\n{out.stdout.strip()}")
        return out

    def _initdb(self) -> None:
        self._run([self.bin_dir / "initdb", "-D", self.data_dir, "--auth=trust",
                   f"--username={RUN_AS}", "--no-sync", "--encoding=UTF8", "--locale=C"])
        lines = ["", "# tests/postgres.py"]
        for key, value in self.settings.items():
            if isinstance(value, str):
                value = "'" + value.replace("'", "''") + "'"
            lines.append(f"{key} = {value}")
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n".join(lines) + "\n")

    def _start_server(self, attempts: int = 5) -> None:
        for attempt in range(1, attempts + 1):
            port = _free_port()
            self._truncate_log()
            out = self._run(
                [self.bin_dir / "pg_ctl", "-D", self.data_dir, "-l", self.log_path,
                 "-w", "-t", str(int(self.start_timeout)),
                 # pg_ctl hands -o to /bin/sh, hence the quoting.
                 "-o", f"-p {port} -k {shlex.quote(str(self.socket_dir))}", "start"],
                check=False, timeout=self.start_timeout + 10)
            if out.returncode == 0:
                self.port = port
                self._wait_ready()
                return
            log_tail = self._log_tail()
            if attempt < attempts and "Address already in use" in log_tail:
                log.info("port %d was taken before PostgreSQL bound it: retrying", port)
                continue
            raise PostgresStartError(
                f"PostgreSQL did not start on {HOST}:{port} (pg_ctl exited {out.returncode}):"
                f"\n{out.stdout.strip()}\n--- server log ({self.log_path}) ---\n{log_tail}")

    def _wait_ready(self) -> None:
        """Wait until the server answers on TCP (pg_ctl -w waits for its "ready" pid file)."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            out = subprocess.run([str(self.bin_dir / "pg_isready"), "-q", "-h", HOST,
                                  "-p", str(self.port), "-U", RUN_AS, "-t", "2"],
                                 capture_output=True, check=False)
            if out.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PostgresStartError(
                    f"PostgreSQL on {HOST}:{self.port} did not accept connections within "
                    f"{self.start_timeout:.0f} s\n--- server log ---\n{self._log_tail()}")
            time.sleep(0.05)

    def _truncate_log(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to 0, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]
