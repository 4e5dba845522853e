"""Shared fixtures: real edge-node processes on loopback ports, the shipped models and data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import edgeshard_models
from coordinator.launcher import start_node


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
