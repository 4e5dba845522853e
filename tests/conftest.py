"""Shared fixtures: real edge-node processes on loopback ports, the shipped models and data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import edgeshard_models
from coordinator.cli.launcher import start_node


@pytest.fixture(scope="session")
def shipped_repository() -> Path:
    return edgeshard_models.repository_path()


@pytest.fixture(scope="session")
def holdout():
    return edgeshard_models.load_holdout()


@pytest.fixture(scope="session")
def node(tmp_path_factory, shipped_repository):
    """One edge-node process on the shipped models, shared by read-only tests."""
    workdir = tmp_path_factory.mktemp("node")
    proc = start_node("test-node", shipped_repository, workdir,
                      extra_args=["--metrics-port", "0", "--workers", "2"])
    yield proc
    proc.stop(grace=5)


THIRD_PARTY_MODELS = Path(__file__).resolve().parent.parent / ".third_party_models" / "mediapipe"


@pytest.fixture(scope="session")
def mediapipe_models() -> Path:
    """The pretrained TFLite models of the MediaPipe 0.10.21 wheel (not trained here).

    Made by scripts/setup_test_models.sh (run by .ci/run). Skips when missing outside CI;
    in CI (``CI`` set) that is a failure.
    """
    if not (THIRD_PARTY_MODELS / "face_detection_short_range.tflite").is_file():
        message = f"{THIRD_PARTY_MODELS} missing: run bash scripts/setup_test_models.sh"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(message + " (CI is set: the setup script must have run)")
        pytest.skip(message)
    return THIRD_PARTY_MODELS


PROMTOOL = Path(__file__).resolve().parent.parent / ".tools" / "promtool"


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Prometheus's promtool, extracted from Debian's package by scripts/setup_promtool.sh
    (run by .ci/run). Skips when missing outside CI; in CI that is a failure."""
    if not PROMTOOL.is_file():
        message = f"{PROMTOOL} missing: run bash scripts/setup_promtool.sh"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(message + " (CI is set: the setup script must have run)")
        pytest.skip(message)
    return PROMTOOL


@pytest.fixture
def repo_copy(tmp_path, shipped_repository) -> Path:
    """A writable copy of the shipped repository, for tests that break models."""
    dst = tmp_path / "repository"
    shutil.copytree(shipped_repository, dst)
    return dst


@pytest.fixture
def start(tmp_path):
    """Start extra edge-node processes; all are stopped after the test."""
    started = []

    def _start(repository: Path, *args: str, name: str = "node", **kwargs):
        proc = start_node(name, repository, tmp_path / name, extra_args=list(args), **kwargs)
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        proc.kill()


FAST_MEMBERSHIP = [
    "--heartbeat-interval-s", "0.3", "--probe-interval-s", "0.3", "--probe-timeout-s", "0.5",
    "--suspect-after-s", "1.0", "--dead-after-s", "2.0", "--shard-deadline-s", "2.0",
    "--lease-s", "10",
]


class Fleet:
    """A coordinator process and edge-node processes on loopback, for one test."""

    def __init__(self, workdir: Path, repository: Path, state_url: str | None = None):
        self.workdir = workdir
        self.repository = repository
        self.state_dir = workdir / "state"
        self.state_url = state_url  # a PostgreSQL job store instead of SQLite in state_dir
        self.coordinator = None
        self.nodes: list = []
        self.client = None

    @property
    def store_location(self) -> str:
        """Where the coordinator's job store is (for ``JobStore``)."""
        return self.state_url or str(self.state_dir / "jobs.sqlite3")

    def start_coordinator(self, *args: str, name: str = "coordinator"):
        from coordinator.api.control_client import CoordinatorClient
        from coordinator.cli.launcher import start_coordinator

        store = ["--state-url", self.state_url] if self.state_url else []
        self.coordinator = start_coordinator(name, self.state_dir, self.workdir,
                                             extra_args=[*FAST_MEMBERSHIP, *store, *args])
        if self.client is not None:
            self.client.close()
        self.client = CoordinatorClient(self.coordinator.address)
        return self.coordinator

    def add_node(self, name: str, *args: str, register: bool = True):
        extra = ["--workers", "1", *args]
        if register:
            extra = ["--coordinator", self.coordinator.address, *extra]
        proc = start_node(name, self.repository, self.workdir, extra_args=extra)
        self.nodes.append(proc)
        return proc

    def wait_live(self, count: int, timeout: float = 30.0) -> list:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nodes = [n for n in self.client.nodes() if n.state == "live"]
            if len(nodes) >= count:
                return nodes
            time.sleep(0.1)
        raise AssertionError(f"only {len(nodes)} of {count} nodes live: {self.client.nodes()}")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        for proc in self.nodes:
            proc.kill()
        if self.coordinator is not None:
            self.coordinator.kill()


@pytest.fixture
def fleet(tmp_path, shipped_repository):
    f = Fleet(tmp_path, shipped_repository)
    yield f
    f.close()



class BusyPort:
    """A loopback port something else listens on, and how a daemon must refuse it."""

    def __init__(self, port: int):
        self.port = port

    def flags(self, flag: str) -> list[str]:
        """Daemon flags that take this port for ``flag`` and free ports for the rest."""
        args = {"--port": "0", "--metrics-port": "0", flag: str(self.port)}
        return [x for kv in args.items() for x in kv]

    def assert_refused(self, out, flag: str) -> None:
        """The daemon (a finished ``subprocess.run``) said in one line it cannot bind it."""
        field = flag[2:].replace("-", "_")
        assert out.returncode == 1, out.stderr
        assert f"cannot start: {field}: cannot bind 127.0.0.1:{self.port}" in out.stderr, \
            out.stderr
        assert (f"choose another port with {flag} (or EDGESHARD_{field.upper()}; 0 picks a "
                "free one)") in out.stderr
        assert "Traceback" not in out.stderr


@pytest.fixture
def busy_port():
    """A ``BusyPort``: a loopback port something else is listening on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield BusyPort(s.getsockname()[1])


# -- PostgreSQL (tests/postgres.py) ------------------------------------------------------

POSTGRES_MISSING = "PostgreSQL is not installed: run bash scripts/setup_postgres.sh"


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real PostgreSQL server (a started ``PostgresServer``) for the session.

    Skips when the server binaries are missing, but fails under CI (``CI`` set), which
    runs scripts/setup_postgres.sh and must not skip silently.
    """
    import os

    from tests.postgres import PostgresNotInstalled, PostgresServer

    try:
        PostgresServer.find_bin_dir()
    except PostgresNotInstalled:
        if os.environ.get("CI"):
            pytest.fail(POSTGRES_MISSING, pytrace=False)
        pytest.skip(POSTGRES_MISSING)
    server = PostgresServer().start(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres):
    """The URL of a fresh, empty database of ``postgres``, dropped after the test."""
    import uuid

    name = f"test_{uuid.uuid4().hex[:16]}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request, tmp_path):
    """Where a job store lives, once per backend: a SQLite file, then a fresh PostgreSQL
    database (the backend-independent store tests run on both)."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    return request.getfixturevalue("pg_url")
