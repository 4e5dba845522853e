"""Dispatcher, ShardRunner and SpoolReplayer over a real JobStore (SQLite in tmp_path) and
a real Registry. No transport: ``run_shard``, the node's ``classify`` and the cloud are
plain functions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from coordinator.cascade.breaker import CircuitBreaker
from coordinator.cascade.budget import CostMeter, TokenBucket
from coordinator.cascade.cloud import CloudTier
from coordinator.cascade.decision import Cascade
from coordinator.cascade.rules import parse_cascade
from coordinator.fleet.forwarder import Forwarder
from coordinator.fleet.registry import LIVE, SUSPECT, NodeRecord, Registry
from coordinator.fleet.router import Router
from coordinator.jobs.dispatcher import Dispatcher
from coordinator.jobs.examples import ExampleBook
from coordinator.jobs.model import JobState, Lease, ResultRow
from coordinator.jobs.replayer import SpoolReplayer
from coordinator.jobs.runner import Classification, ShardOutput, ShardRunner, shard_results
from coordinator.jobs.spool_queue import SpoolQueue
from coordinator.jobs.store import JobStore
from edgeshard.errors import PeerStatusError

MODELS = {"m": ("1",)}


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition"):
    """Poll ``predicate`` every 10 ms until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def make_store(tmp_path):
    stores: list[JobStore] = []

    def make(max_failures: int = 3) -> JobStore:
        store = JobStore(str(tmp_path / f"jobs{len(stores)}.db"), max_failures=max_failures)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store) -> JobStore:
    return make_store()


@pytest.fixture
def registry() -> Registry:
    reg = Registry(suspect_after=60.0, dead_after=120.0)
    add_node(reg, "node-a", "a:1")
    return reg


def add_node(reg: Registry, node_id: str, address: str) -> None:
    reg.register(node_id, address, MODELS, capacity=4)
    reg.probe_ok(address)


@pytest.fixture
def dispatchers():
    started: list[Dispatcher] = []

    def start(store: JobStore, registry: Registry, run_shard, **kwargs) -> Dispatcher:
        kwargs.setdefault("shards_per_node", 2)
        kwargs.setdefault("lease_s", 30.0)
        d = Dispatcher(store, registry, run_shard, **kwargs)
        started.append(d)
        d.start()
        return d

    yield start
    for d in started:
        d.close(timeout=2.0)


def items(n: int) -> tuple[list[str], np.ndarray]:
    return [f"item-{i}" for i in range(n)], np.arange(n * 2, dtype=np.float32).reshape(n, 2)


def echo_results(node: NodeRecord, lease: Lease) -> ShardOutput:
    """A node that labels each item with its first value."""
    return ShardOutput([ResultRow(item, int(row[0]), 0.9, "edge", node.node_id, "1")
                        for item, row in zip(lease.ids, lease.array, strict=True)])


class Scripted:
    """run_shard that raises the queued exceptions first, then answers like echo_results."""

    def __init__(self, *errors: BaseException, fail_on: str | None = None):
        self.errors = list(errors)
        self.fail_on = fail_on  # raise only on this address (always), if set
        self.calls: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, node: NodeRecord, lease: Lease) -> ShardOutput:
        with self._lock:
            self.calls.append((node.address, lease.shard_id, lease.attempt))
            if self.fail_on is not None:
                if node.address == self.fail_on:
                    raise self.errors[0]
            elif self.errors:
                raise self.errors.pop(0)
        return echo_results(node, lease)


def finished(store: JobStore, job_id: str):
    progress = store.progress(job_id)
    return progress if progress.state.finished else None


def assert_one_result_per_item(store: JobStore, job_id: str, ids: list[str]) -> list[ResultRow]:
    results = store.results(job_id)
    assert sorted(r.item_id for r in results) == sorted(ids)
    return results


# -- Dispatcher ------------------------------------------------------------------------------

def test_every_item_gets_exactly_one_result(store, registry, dispatchers):
    ids, data = items(10)
    job = store.create_job("m", (ids, data), shard_size=3)
    commits: list[tuple[str, int, int]] = []
    dispatchers(store, registry, echo_results,
                on_commit=lambda node, accepted, dup: commits.append((node, accepted, dup)))
    progress = wait_for(lambda: finished(store, job.job_id), what="job done")
    assert progress.state is JobState.DONE
    assert progress.done_items == 10 and progress.shards_done == 4 == progress.shards_total
    results = assert_one_result_per_item(store, job.job_id, ids)
    assert {r.item_id: r.label for r in results} == {f"item-{i}": 2 * i for i in range(10)}
    assert all(r.tier == "edge" and r.node == "node-a" for r in results)
    assert sum(accepted for _, accepted, _ in commits) == 10
    assert all(dup == 0 for _, _, dup in commits)
    assert store.shares(job.job_id) == {"node-a": 10}


def test_job_created_after_start_is_picked_up(store, registry, dispatchers):
    d = dispatchers(store, registry, echo_results)
    ids, data = items(4)
    job = store.create_job("m", (ids, data), shard_size=2)
    d.notify()
    assert wait_for(lambda: finished(store, job.job_id)).state is JobState.DONE
    assert_one_result_per_item(store, job.job_id, ids)


def test_nodes_only_get_shards_of_models_they_serve(store, registry, dispatchers):
    ids, data = items(2)
    other = store.create_job("other-model", (ids, data), shard_size=1)
    job = store.create_job("m", (ids, data), shard_size=1)
    run = Scripted()
    dispatchers(store, registry, run)
    wait_for(lambda: finished(store, job.job_id))
    assert store.progress(other.job_id).state is JobState.RUNNING
    assert store.progress(other.job_id).done_items == 0
    assert len(run.calls) == 2


def test_unavailable_requeues_without_failure_and_marks_the_node_suspect(
        make_store, registry, dispatchers):
    store = make_store(max_failures=1)  # any counted failure would fail the job at once
    ids, data = items(6)
    job = store.create_job("m", (ids, data), shard_size=2)
    run = Scripted(PeerStatusError("UNAVAILABLE", "down"), fail_on="a:1")
    d = dispatchers(store, registry, run)
    wait_for(lambda: registry.get("a:1").state == SUSPECT, what="node-a suspect")
    wait_for(lambda: store.progress(job.job_id).shards_leased == 0, what="shards re-queued")
    progress = store.progress(job.job_id)
    assert progress.state is JobState.RUNNING and progress.done_items == 0
    assert d.requeued >= 1

    add_node(registry, "node-b", "b:1")  # a healthy node joins and takes the work
    progress = wait_for(lambda: finished(store, job.job_id), what="job done")
    assert progress.state is JobState.DONE and progress.error is None
    assert store.shares(job.job_id) == {"node-b": 6}
    assert_one_result_per_item(store, job.job_id, ids)
    assert registry.get("a:1").state == SUSPECT
    assert {address for address, _, _ in run.calls} == {"a:1", "b:1"}


def test_suspect_node_resumes_after_a_health_check(store, registry, dispatchers):
    ids, data = items(4)
    job = store.create_job("m", (ids, data), shard_size=2)
    run = Scripted(PeerStatusError("DEADLINE_EXCEEDED", "hung"))
    dispatchers(store, registry, run, shards_per_node=1)
    wait_for(lambda: registry.get("a:1").state == SUSPECT, what="node-a suspect")
    # the node's pullers stop pulling while it is suspect
    wait_for(lambda: not any(t.name.startswith("pull-node-a") for t in threading.enumerate()),
             what="pullers of the suspect node to stop")
    assert store.progress(job.job_id).done_items == 0
    registry.probe_ok("a:1")  # health check passes: the node is live and pulls again
    assert wait_for(lambda: finished(store, job.job_id)).state is JobState.DONE
    assert_one_result_per_item(store, job.job_id, ids)


def test_invalid_argument_counts_as_failure_and_fails_the_job(make_store, registry,
                                                              dispatchers):
    store = make_store(max_failures=2)
    ids, data = items(3)
    job = store.create_job("m", (ids, data), shard_size=3)  # one shard
    run = Scripted(*[PeerStatusError("INVALID_ARGUMENT", "input: wrong shape")] * 5)
    dispatchers(store, registry, run)
    progress = wait_for(lambda: finished(store, job.job_id), what="job failed")
    assert progress.state is JobState.FAILED
    assert "failed 2 times" in progress.error
    assert "INVALID_ARGUMENT" in progress.error and "wrong shape" in progress.error
    assert [attempt for _, _, attempt in run.calls] == [1, 2]  # no lease after the job failed
    assert store.results(job.job_id) == []
    assert registry.get("a:1").state == LIVE  # the shard's fault, not the node's


def test_invalid_argument_below_max_failures_is_retried(make_store, registry, dispatchers):
    store = make_store(max_failures=3)
    ids, data = items(4)
    job = store.create_job("m", (ids, data), shard_size=4)
    run = Scripted(PeerStatusError("INVALID_ARGUMENT", "bad"),
                   PeerStatusError("INVALID_ARGUMENT", "bad"))
    dispatchers(store, registry, run)
    assert wait_for(lambda: finished(store, job.job_id)).state is JobState.DONE
    assert [attempt for _, _, attempt in run.calls] == [1, 2, 3]
    assert_one_result_per_item(store, job.job_id, ids)


def test_unexpected_exception_requeues_the_shard(make_store, registry, dispatchers):
    store = make_store(max_failures=2)
    ids, data = items(5)
    job = store.create_job("m", (ids, data), shard_size=5)
    run = Scripted(RuntimeError("bug in run_shard"))
    dispatchers(store, registry, run)
    progress = wait_for(lambda: finished(store, job.job_id))
    assert progress.state is JobState.DONE
    assert [attempt for _, _, attempt in run.calls] == [1, 2]
    assert_one_result_per_item(store, job.job_id, ids)
    assert registry.get("a:1").state == LIVE


def test_partial_results_requeue_the_rest(store, registry, dispatchers):
    ids, data = items(4)
    job = store.create_job("m", (ids, data), shard_size=4)
    calls = []

    def half_then_all(node: NodeRecord, lease: Lease) -> ShardOutput:
        calls.append(lease.attempt)
        out = echo_results(node, lease)
        return ShardOutput(out.results.rows()[:2]) if lease.attempt == 1 else out

    dispatchers(store, registry, half_then_all, shards_per_node=1)
    assert wait_for(lambda: finished(store, job.job_id)).state is JobState.DONE
    assert calls == [1, 2]
    assert_one_result_per_item(store, job.job_id, ids)


def test_rejected_results_do_not_stop_the_node_pulling(store, registry, dispatchers):
    ids, data = items(2)
    job = store.create_job("m", (ids, data), shard_size=2)
    calls = []

    def nan_first(node: NodeRecord, lease: Lease) -> ShardOutput:
        calls.append(lease.attempt)
        out = echo_results(node, lease)
        if lease.attempt == 1:
            return ShardOutput([ResultRow(r.item_id, r.label, float("nan"), r.tier, r.node,
                                          r.model_version) for r in out.results.rows()])
        return out

    # short leases: the sweeper re-queues the shard within a second either way
    dispatchers(store, registry, nan_first, shards_per_node=1, lease_s=0.2)
    progress = wait_for(lambda: finished(store, job.job_id), timeout=2.0, what="job done")
    assert progress.state is JobState.DONE
    assert calls[:2] == [1, 2]


def test_a_store_error_does_not_end_the_pullers(store, dispatchers, caplog):
    # A real SQLite refusal: the store's connection may not write while query_only is on,
    # as when its disk is full. The store logs it once, the pullers keep trying, and the
    # job finishes once the store takes writes again.
    caplog.set_level(logging.INFO, logger="coordinator.jobs.database")
    ids, data = items(4)
    job = store.create_job("m", (ids, data), shard_size=2)
    registry = Registry(suspect_after=60.0, dead_after=120.0)
    registry.register("node-a", "a:1", MODELS, capacity=4)
    dispatchers(store, registry, echo_results, shards_per_node=1)
    with store.lock:
        store.db.execute("PRAGMA query_only = ON")
    registry.probe_ok("a:1")  # the node turns live: its puller starts on a read-only store
    wait_for(lambda: "cannot write" in caplog.text, what="the puller to hit the store error")
    with store.lock:
        store.db.execute("PRAGMA query_only = OFF")
    progress = wait_for(lambda: finished(store, job.job_id), timeout=5.0, what="job done")
    assert progress.state is JobState.DONE
    assert progress.done_items == 4
    assert any(t.name.startswith("pull-node-a") and t.is_alive() for t in threading.enumerate())
    wait_for(lambda: store.fault is None, timeout=10.0, what="the fault to clear")
    assert caplog.text.count("cannot write") == 1 and "writes again" in caplog.text


def test_close_stops_the_pullers(store, registry):
    d = Dispatcher(store, registry, echo_results, shards_per_node=2)
    d.start()
    assert sum(t.name.startswith("pull-node-a") for t in threading.enumerate()) == 2
    d.close(timeout=2.0)
    assert not any(t.name.startswith("pull-node-a") and t.is_alive()
                   for t in threading.enumerate())


# -- ShardRunner, shard_results, the spool ----------------------------------------------------

# item rows are the edge model's probabilities: rows 0 and 2 are confident, 1 and 3 are not
PROBS = np.array([[0.9, 0.05, 0.05],
                  [0.4, 0.35, 0.25],
                  [0.05, 0.9, 0.05],
                  [0.3, 0.3, 0.4]], dtype=np.float32)
CASCADE_IDS = ["c0", "c1", "c2", "c3"]


class EdgeNode:
    """classify(): the items are the probabilities; labels are their argmax."""

    def __init__(self):
        self.asked_probabilities: list[bool] = []

    def __call__(self, node: NodeRecord, model: str, array: np.ndarray, version: str,
                 with_probabilities: bool, timeout: float) -> Classification:
        assert model == "m" and timeout > 0
        self.asked_probabilities.append(with_probabilities)
        probs = np.asarray(array, dtype=np.float32)
        return Classification(probs.argmax(axis=1).astype(np.int64), probs.max(axis=1),
                              probs if with_probabilities else None, "v7", node.node_id)


class Cloud:
    """The cloud model: label 40 + edge argmax, a failure while ``down``, or a refusal of
    the request (INVALID_ARGUMENT) while ``refusing``."""

    def __init__(self, down: bool, refusing: bool = False):
        self.down = down
        self.refusing = refusing
        self.sent = 0

    def __call__(self, cloud_model: str, array: np.ndarray, timeout: float):
        assert cloud_model == "m-cloud"
        if self.down:
            raise ConnectionError("cloud down")
        if self.refusing:
            raise PeerStatusError("INVALID_ARGUMENT", "inputs[0].datatype: expected FP32")
        self.sent += len(array)
        return 40 + array.argmax(axis=1).astype(np.int64), np.full(len(array), 0.99, np.float32)


def make_cascade(cloud: Cloud) -> Cascade:
    rules = parse_cascade(("m=m-cloud",), ("m=max_prob:0.8",))
    tier = CloudTier(cloud, CircuitBreaker(100, 1.0), TokenBucket(None, 1000), CostMeter(),
                     max_batch=8)
    return Cascade(rules, tier)


def make_runner(registry: Registry, cascade: Cascade | None, edge: EdgeNode) -> ShardRunner:
    forwarder = Forwarder(registry, Router(registry), max_in_flight=8)
    return ShardRunner(forwarder, edge, deadline_s=2.0, cascade=cascade, cloud_timeout_s=2.0)


def lease_one(store: JobStore) -> Lease:
    lease = store.lease_next("a:1", 30.0, time.time(), models={"m"})
    assert lease is not None
    return lease


def test_shard_runner_without_cascade_gives_edge_results(store, registry):
    store.create_job("m", (CASCADE_IDS, PROBS), shard_size=4, params={"model_version": "v7"})
    edge = EdgeNode()
    out = make_runner(registry, None, edge)(registry.get("a:1"), lease_one(store))
    assert edge.asked_probabilities == [False]
    assert out.escalations == []
    assert [(r.item_id, r.label, r.tier, r.node, r.model_version) for r in out.results.rows()] == [
        ("c0", 0, "edge", "node-a", "v7"), ("c1", 0, "edge", "node-a", "v7"),
        ("c2", 1, "edge", "node-a", "v7"), ("c3", 2, "edge", "node-a", "v7")]
    node = registry.get("a:1")
    assert node.items_done == 4 and node.shards_done == 1 and node.outstanding == 0


def test_shard_runner_node_error_propagates_and_marks_suspect(store, registry):
    store.create_job("m", (CASCADE_IDS, PROBS), shard_size=4)

    def down(*_args) -> Classification:
        raise PeerStatusError("UNAVAILABLE", "node down")

    runner = make_runner(registry, None, down)
    with pytest.raises(PeerStatusError, match="node down"):
        runner(registry.get("a:1"), lease_one(store))
    assert registry.get("a:1").state == SUSPECT
    assert registry.get("a:1").outstanding == 0


def test_shard_runner_with_answering_cloud(store, registry):
    store.create_job("m", (CASCADE_IDS, PROBS), shard_size=4)
    cloud, edge = Cloud(down=False), EdgeNode()
    out = make_runner(registry, make_cascade(cloud), edge)(registry.get("a:1"), lease_one(store))
    assert edge.asked_probabilities == [True]
    assert out.escalations == [] and cloud.sent == 2
    by_id = {r.item_id: r for r in out.results.rows()}
    assert [by_id[i].tier for i in CASCADE_IDS] == ["edge", "cloud", "edge", "cloud"]
    assert by_id["c1"].label == 40 and by_id["c3"].label == 42
    assert by_id["c1"].extra == {"edge_label": 0, "edge_confidence": pytest.approx(0.4),
                                 "escalated": True, "degraded": False, "cloud_label": 40,
                                 "cloud_confidence": pytest.approx(0.99)}
    assert by_id["c0"].extra["escalated"] is False and "cloud_label" not in by_id["c0"].extra


def test_unanswered_escalations_become_spool_escalations(store, registry):
    job = store.create_job("m", (CASCADE_IDS, PROBS), shard_size=4)
    cloud = Cloud(down=True)
    lease = lease_one(store)
    out = make_runner(registry, make_cascade(cloud), EdgeNode())(registry.get("a:1"), lease)
    assert [r.item_id for r in out.results.rows()] == ["c0", "c2"]
    assert all(r.tier == "edge" for r in out.results.rows())
    assert [e.item_id for e in out.escalations] == ["c1", "c3"]
    for e in out.escalations:
        i = CASCADE_IDS.index(e.item_id)
        assert np.array_equal(e.data, PROBS[i])
        assert e.fallback.tier == "edge" and e.fallback.node == "node-a"
        assert e.fallback.label == int(PROBS[i].argmax())
        assert e.fallback.extra["escalated"] is True and "cloud_label" not in e.fallback.extra

    outcome = store.complete(lease.shard_id, lease.attempt, out.results,
                             escalations=out.escalations)
    assert outcome.accepted == 2 and outcome.spooled == 2
    progress = store.progress(job.job_id)
    assert progress.shards_done == 1  # spooled items count as handled for the shard
    assert progress.state is JobState.RUNNING  # but their final result is still to come
    assert progress.done_items == 2 and progress.pending_escalations == 2
    pending = SpoolQueue(store).pending(job.job_id)
    assert sorted(r.item_id for r in pending) == ["c1", "c3"]
    assert all(r.extra["degraded"] is True for r in pending)


def test_shard_results_from_a_decision_directly():
    cloud = Cloud(down=False)
    cascade = make_cascade(cloud)
    cascade.cloud.budget = TokenBucket(0.0, 1)  # the cloud may answer one item only
    decision = cascade.decide(cascade.rule("m"), PROBS, PROBS, CASCADE_IDS, 1.0)
    out = shard_results(decision, CASCADE_IDS, PROBS, "node-x", "v1")
    assert [(r.item_id, r.tier) for r in out.results.rows()] == [
        ("c0", "edge"), ("c1", "cloud"), ("c2", "edge")]
    assert [e.item_id for e in out.escalations] == ["c3"]
    assert out.escalations[0].fallback.label == 2
    assert all(r.node == "node-x" and r.model_version == "v1" for r in out.results.rows())


def test_spool_replayer_resolves_spooled_items_once_the_cloud_answers(store, registry):
    job = store.create_job("m", (CASCADE_IDS, PROBS), shard_size=2)
    cloud = Cloud(down=True)
    cascade = make_cascade(cloud)
    runner = make_runner(registry, cascade, EdgeNode())
    node = registry.get("a:1")
    for _ in range(2):
        lease = lease_one(store)
        out = runner(node, lease)
        store.complete(lease.shard_id, lease.attempt, out.results, escalations=out.escalations)
    assert store.progress(job.job_id).pending_escalations == 2

    changes = []
    queue = SpoolQueue(store)
    replayer = SpoolReplayer(queue, cascade, timeout=1.0, on_change=lambda: changes.append(1))
    assert replayer.run_once() == 0  # the cloud is still down
    assert store.progress(job.job_id).pending_escalations == 2
    entries = queue.take(10, time.time())
    assert [e.attempts for e in entries] == [1, 1]
    assert all(e.model == "m" for e in entries)
    assert all("cloud down" in (row[0] or "") for row in store.db.execute(
        "SELECT last_error FROM spool").fetchall())
    assert changes == []

    cloud.down = False
    assert replayer.run_once() == 2
    assert replayer.replayed == 2 and changes == [1]
    progress = store.progress(job.job_id)
    assert progress.state is JobState.DONE
    assert progress.pending_escalations == 0 and progress.cloud_answered == 2
    assert progress.degraded == 0
    results = {r.item_id: r for r in assert_one_result_per_item(store, job.job_id, CASCADE_IDS)}
    assert results["c1"].tier == "cloud" and results["c1"].label == 40
    assert results["c3"].tier == "cloud" and results["c3"].label == 42
    assert results["c1"].extra["spooled"] is True and results["c1"].extra["edge_label"] == 0
    assert results["c1"].node == "node-a"
    assert results["c0"].tier == "edge" and results["c0"].label == 0
    assert replayer.run_once() == 0  # nothing left


def test_a_rerun_shard_keeps_its_hard_examples_once(store, registry):
    """A node answers a shard and dies before its results are written: the shard runs again
    (this time the cloud is down, so its escalations are spooled and replayed later), and
    its escalated items are still stored once; another job's items of the same ids are its
    own examples."""
    book = ExampleBook(store.database)
    cloud = Cloud(down=False)
    cascade = make_cascade(cloud)
    cascade.on_compared = lambda c: book.add([c])
    runner = make_runner(registry, cascade, EdgeNode())
    node = registry.get("a:1")
    job = store.create_job("m", (CASCADE_IDS, PROBS), shard_size=4)
    first = lease_one(store)
    runner(node, first)  # c1 and c3 escalated and answered; the results are never written
    assert book.counts() == {"m": 2}
    assert store.requeue_expired(first.lease_expires) == [(first.shard_id, "a:1")]
    cloud.down = True
    again = lease_one(store)
    assert (again.shard_id, again.attempt) == (first.shard_id, first.attempt + 1)
    out = runner(node, again)
    store.complete(again.shard_id, again.attempt, out.results, escalations=out.escalations)
    cloud.down = False
    assert SpoolReplayer(SpoolQueue(store), cascade, timeout=1.0).run_once() == 2
    assert cloud.sent == 4  # c1 and c3 twice: the first run, then the replay
    assert store.progress(job.job_id).state is JobState.DONE
    other = store.create_job("m", (CASCADE_IDS, PROBS), shard_size=4)
    runner(node, lease_one(store))
    assert store.db.execute("SELECT job_id, item_id, source FROM hard_examples "
                            "ORDER BY seq").fetchall() == [
        (job.job_id, "c1", "escalated"), (job.job_id, "c3", "escalated"),
        (other.job_id, "c1", "escalated"), (other.job_id, "c3", "escalated")]


def test_spool_replayer_expires_entries_to_their_edge_answer(store, registry):
    job = store.create_job("m", (CASCADE_IDS, PROBS), shard_size=4)
    runner = make_runner(registry, make_cascade(Cloud(down=True)), EdgeNode())
    lease = lease_one(store)
    out = runner(registry.get("a:1"), lease)
    store.complete(lease.shard_id, lease.attempt, out.results, escalations=out.escalations)
    replayer = SpoolReplayer(SpoolQueue(store), make_cascade(Cloud(down=False)), timeout=1.0)
    assert replayer.run_once(now=time.time() + 2 * 24 * 3600) == 0  # past the default TTL
    progress = store.progress(job.job_id)
    assert progress.state is JobState.DONE and progress.degraded == 2
    results = {r.item_id: r for r in store.results(job.job_id)}
    assert results["c1"].tier == "edge" and results["c1"].extra["expired"] is True


def test_dispatcher_with_shard_runner_spools_then_replays(store, registry, dispatchers):
    ids = [f"x{i}" for i in range(8)]
    data = np.concatenate([PROBS, PROBS])
    job = store.create_job("m", (ids, data), shard_size=3)
    cloud = Cloud(down=True)
    cascade = make_cascade(cloud)
    dispatchers(store, registry, make_runner(registry, cascade, EdgeNode()))
    wait_for(lambda: store.progress(job.job_id).shards_done == 3, what="all shards done")
    progress = store.progress(job.job_id)
    assert progress.state is JobState.RUNNING
    assert progress.done_items == 4 and progress.pending_escalations == 4

    cloud.down = False
    replayer = SpoolReplayer(SpoolQueue(store), cascade, timeout=1.0)
    assert replayer.run_once() == 4
    progress = store.progress(job.job_id)
    assert progress.state is JobState.DONE and progress.cloud_answered == 4
    results = assert_one_result_per_item(store, job.job_id, ids)
    assert sorted(r.item_id for r in results if r.tier == "cloud") == ["x1", "x3", "x5", "x7"]


def test_items_the_cloud_refuses_get_their_edge_answer_as_final(store, registry):
    job = store.create_job("m", (CASCADE_IDS, PROBS), shard_size=4)
    lease = lease_one(store)
    cascade = make_cascade(Cloud(down=False, refusing=True))
    out = make_runner(registry, cascade, EdgeNode())(registry.get("a:1"), lease)
    assert out.escalations == []  # nothing spooled: it would be refused again
    refused = {r.item_id: r for r in out.results.rows() if r.extra.get("cloud_error")}
    assert sorted(refused) == ["c1", "c3"]
    for r in refused.values():
        assert r.tier == "edge" and r.extra["degraded"] is True
        assert "INVALID_ARGUMENT" in r.extra["cloud_error"]
    store.complete(lease.shard_id, lease.attempt, out.results, escalations=out.escalations)
    progress = store.progress(job.job_id)
    assert progress.state is JobState.DONE and progress.degraded == 2
    assert cascade.cloud.breaker.consecutive_failures == 0


def test_spool_replayer_finalizes_entries_the_cloud_refuses(store, registry):
    job = store.create_job("m", (CASCADE_IDS, PROBS), shard_size=4)
    cloud = Cloud(down=True)
    cascade = make_cascade(cloud)
    lease = lease_one(store)
    out = make_runner(registry, cascade, EdgeNode())(registry.get("a:1"), lease)
    store.complete(lease.shard_id, lease.attempt, out.results, escalations=out.escalations)
    assert store.progress(job.job_id).pending_escalations == 2
    cloud.down, cloud.refusing = False, True
    replayer = SpoolReplayer(SpoolQueue(store), cascade, timeout=1.0)
    assert replayer.run_once() == 2
    progress = store.progress(job.job_id)
    assert progress.state is JobState.DONE and progress.pending_escalations == 0
    results = {r.item_id: r for r in assert_one_result_per_item(store, job.job_id, CASCADE_IDS)}
    assert results["c1"].tier == "edge" and results["c1"].extra["degraded"] is True
    assert "INVALID_ARGUMENT" in results["c1"].extra["cloud_error"]
