"""Rollouts in the job store (schema version 6): saved, replaced, read back, upgraded."""

from __future__ import annotations

import sqlite3

from coordinator.jobs.rollouts import RolloutBook
from coordinator.jobs.schema import SCHEMA_VERSION
from coordinator.jobs.store import JobStore
from tests.coordinator.jobs.older_schema import drops_after

ROW = {"model": "mnist_edge", "stable": "1", "canary": "2", "share": 0.2, "shadow": 0.1,
       "margins": {"min_requests": 50, "error_rate": 0.02}, "state": "running",
       "reason": "", "stats": {}, "started_at": 100.0, "decided_at": 0.0}


def test_a_rollout_is_saved_replaced_and_survives_reopening(store_location):
    store = JobStore(store_location)
    try:
        book = RolloutBook(store.database)
        assert book.load() == []
        book.save(ROW)
        decided = {**ROW, "state": "rolled_back", "reason": "confidence fell",
                   "stats": {"confidence_ks": 0.8}, "decided_at": 101.5}
        book.save(decided)
        book.save({**ROW, "model": "other"})
    finally:
        store.close()
    store = JobStore(store_location)
    try:
        rows = RolloutBook(store.database).load()
        assert [r["model"] for r in rows] == ["mnist_edge", "other"]
        assert rows[0] == decided
    finally:
        store.close()


def test_a_version_5_sqlite_store_gains_rollouts(tmp_path):
    path = str(tmp_path / "jobs.db")
    JobStore(path).close()
    db = sqlite3.connect(path)
    for drop in drops_after(5):
        db.execute(drop)
    db.execute("PRAGMA user_version=5")
    db.commit()
    db.close()
    store = JobStore(path)  # upgraded in place
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        RolloutBook(store.database).save(ROW)
        assert RolloutBook(store.database).load() == [ROW]
    finally:
        store.close()


def test_a_version_5_postgresql_store_gains_rollouts(pg_url):
    store = JobStore(pg_url)
    store.database.write(lambda db: ([db.execute(d) for d in drops_after(5)],
                                     db.execute("UPDATE edgeshard_schema SET version = 5")))
    store.close()
    store = JobStore(pg_url)
    try:
        version = store.database.read(
            lambda db: db.execute("SELECT version FROM edgeshard_schema").fetchone()[0])
        assert version == SCHEMA_VERSION
        RolloutBook(store.database).save(ROW)
        assert RolloutBook(store.database).load() == [ROW]
    finally:
        store.close()
