"""Rollouts in the job store (schema version 6): saved, replaced, read back, upgraded."""

from __future__ import annotations

from coordinator.jobs.rollouts import RolloutBook
from coordinator.jobs.schema import SCHEMA_VERSION
from coordinator.jobs.store import JobStore
from tests.coordinator.jobs.older_schema import make_older, stored_version

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


def test_a_version_5_store_gains_rollouts(store_location):
    make_older(store_location, 5)
    store = JobStore(store_location)  # upgraded in place
    try:
        assert stored_version(store) == SCHEMA_VERSION
        RolloutBook(store.database).save(ROW)
        assert RolloutBook(store.database).load() == [ROW]
    finally:
        store.close()
