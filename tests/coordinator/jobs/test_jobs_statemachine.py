"""Random interleavings of lease/complete/release/requeue/expire/recover across three nodes.

A model remembers, per item, the first (node, attempt) that answered it. After every step the
store must agree with the model; at the end a drain finishes all shards and every item must
have exactly one result, the first writer's.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from coordinator.jobs.model import ResultRow
from coordinator.jobs.store import JobStore

NODES = ("n0", "n1", "n2")
ITEMS = 10
LEASE_SECONDS = 10.0


class JobStoreMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="jobstore-sm-")
        self.path = self.location()
        self.store = JobStore(self.path, max_failures=10_000)
        info = self.store.create_job("m", (None, np.zeros((ITEMS, 2, 2), np.uint8)), 3, {})
        self.job_id = info.job_id
        self.now = 0.0
        self.leases = []  # every lease ever handed out, stale ones included
        self.current = {}  # shard_id -> latest attempt
        self.first = {}  # item_id -> (node, attempt) of the first answer

    def location(self) -> str:
        """A fresh, empty store for this example."""
        return str(Path(self.dir) / "jobs.db")

    def answers(self, lease, ids):
        return [ResultRow(i, int(i), 0.5, "edge", lease.node_id, str(lease.attempt))
                for i in ids]

    def deliver(self, lease, ids):
        new = [i for i in dict.fromkeys(ids) if i not in self.first]
        outcome = self.store.complete(lease.shard_id, lease.attempt, self.answers(lease, ids))
        assert outcome.accepted == len(new)
        assert outcome.duplicates == len(ids) - len(new)
        assert outcome.stale == (lease.attempt < self.current[lease.shard_id])
        for i in new:
            self.first[i] = (lease.node_id, lease.attempt)

    @rule(node=st.sampled_from(NODES))
    def lease(self, node):
        lease = self.store.lease_next(node, LEASE_SECONDS, self.now)
        if lease is None:
            return
        assert lease.attempt == self.current.get(lease.shard_id, 0) + 1
        assert not set(lease.ids) <= set(self.first), "a fully answered shard was leased"
        self.current[lease.shard_id] = lease.attempt
        self.leases.append(lease)

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), full=st.booleans())
    def complete(self, data, full):
        lease = data.draw(st.sampled_from(self.leases))
        ids = lease.ids if full else data.draw(
            st.lists(st.sampled_from(lease.ids), min_size=1, max_size=len(lease.ids)))
        self.deliver(lease, ids)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def release(self, data):
        lease = data.draw(st.sampled_from(self.leases))
        self.store.release(lease.shard_id, lease.attempt, "random failure")

    @rule(node=st.sampled_from(NODES))
    def requeue_node(self, node):
        self.store.requeue_node(node)

    @rule(dt=st.floats(min_value=0, max_value=2 * LEASE_SECONDS))
    def expire(self, dt):
        self.now += dt
        for shard_id, _node in self.store.requeue_expired(self.now):
            assert shard_id in self.current

    @rule()
    def restart(self):
        self.store.close()
        self.store = JobStore(self.path, max_failures=10_000)
        self.store.recover()
        assert self.store.progress(self.job_id).shards_leased == 0

    @invariant()
    def store_matches_model(self):
        rows = self.store.results(self.job_id)
        assert {r.item_id: (r.node, int(r.model_version)) for r in rows} == self.first
        assert len(rows) == len(self.first)
        assert [r.seq for r in rows] == sorted(r.seq for r in rows)
        progress = self.store.progress(self.job_id)
        assert progress.done_items == len(self.first)
        assert progress.state == ("done" if len(self.first) == ITEMS else "running")

    def teardown(self):
        try:
            self.restart()  # the leases of the process that held them are void
            while (lease := self.store.lease_next("drain", LEASE_SECONDS, self.now)) is not None:
                self.current[lease.shard_id] = lease.attempt
                self.deliver(lease, lease.ids)
            rows = self.store.results(self.job_id)
            assert sorted(int(r.item_id) for r in rows) == list(range(ITEMS))
            assert {r.item_id: (r.node, int(r.model_version)) for r in rows} == self.first
            progress = self.store.progress(self.job_id)
            assert (progress.state, progress.shards_done) == ("done", progress.shards_total)
        finally:
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)


JobStoreMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow])
test_job_store_state_machine = JobStoreMachine.TestCase


class PostgresJobStoreMachine(JobStoreMachine):
    """The same machine on PostgreSQL: each example starts from an empty schema."""

    url = ""  # set by the test below

    def location(self) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return self.url


def test_job_store_state_machine_on_postgresql(pg_url, monkeypatch):
    monkeypatch.setattr(PostgresJobStoreMachine, "url", pg_url)
    run_state_machine_as_test(PostgresJobStoreMachine, settings=settings(
        max_examples=20, stateful_step_count=30, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow]))
