"""The job store on real SQLite files: shard lifecycle, exactly-once results, resume."""

from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import pytest

from coordinator.errors import (
    InvalidJobError,
    InvalidResultError,
    JobConflictError,
    JobNotFoundError,
    ShardNotFoundError,
)
from coordinator.jobs.items import load_items
from coordinator.jobs.model import ResultRow
from coordinator.jobs.schema import SCHEMA_VERSION
from coordinator.jobs.store import JobStore
from tests.coordinator.jobs.older_schema import drops_after


@pytest.fixture
def store(store_location):
    s = JobStore(store_location)
    yield s
    s.close()


def images(n: int, shape=(4, 4)) -> np.ndarray:
    return (np.arange(n * int(np.prod(shape))) % 251).astype(np.uint8).reshape((n, *shape))


def answer(lease, label: int = 1, ids=None) -> list[ResultRow]:
    return [ResultRow(i, label, 0.9, "edge", lease.node_id, f"v{lease.attempt}",
                      {"a": lease.attempt})
            for i in (lease.ids if ids is None else ids)]


def job(store, n=10, shard_size=3, **kwargs):
    return store.create_job("mnist", (None, images(n)), shard_size, {"k": 1}, **kwargs)


def one_result_per_item(store, job_id) -> dict[str, ResultRow]:
    rows = store.results(job_id)
    by_item = {r.item_id: r for r in rows}
    assert len(by_item) == len(rows)
    return by_item


# -- create / lease / complete --------------------------------------------------------------


def test_create_splits_into_shards_and_stores_payloads(store):
    data = images(10)
    info = store.create_job("mnist", (None, data), 3, {"threshold": 0.5})
    assert (info.total_items, info.shard_count, info.state, info.existing) == (
        10, 4, "running", False)
    leases = [store.lease_next("n1", 30, now=0) for _ in range(4)]
    assert store.lease_next("n1", 30, now=0) is None
    assert [len(lease.ids) for lease in leases] == [3, 3, 3, 1]
    assert sum((lease.ids for lease in leases), []) == [str(i) for i in range(10)]
    np.testing.assert_array_equal(np.concatenate([lease.array for lease in leases]), data)
    assert all(lease.params == {"threshold": 0.5} and lease.model == "mnist" for lease in leases)
    assert all(lease.attempt == 1 and lease.lease_expires == 30 for lease in leases)


def test_create_lease_complete_finishes_the_job(store):
    info = job(store)
    while (lease := store.lease_next("n1", 30, now=0)) is not None:
        outcome = store.complete(lease.shard_id, lease.attempt, answer(lease), now=5.0)
        assert (outcome.accepted, outcome.duplicates, outcome.stale) == (len(lease.ids), 0, False)
    progress = store.progress(info.job_id)
    assert progress.state == "done" and progress.finished_at == 5.0
    assert (progress.done_items, progress.shards_done, progress.shards_leased) == (10, 4, 0)
    rows = store.results(info.job_id)
    assert [r.item_id for r in rows] == [str(i) for i in range(10)]
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)
    assert rows[0].extra == {"a": 1} and rows[0].node == "n1"


def test_progress_counts_while_running(store):
    info = job(store)
    a = store.lease_next("n1", 30, now=0)
    store.lease_next("n2", 30, now=0)
    store.complete(a.shard_id, a.attempt, answer(a))
    p = store.progress(info.job_id)
    assert (p.state, p.done_items, p.shards_total, p.shards_done, p.shards_leased) == (
        "running", 3, 4, 1, 1)
    assert p.finished_at is None and p.error is None


def test_create_from_a_msgpack_file(store, tmp_path):
    path = tmp_path / "in.msgpack"
    with open(path, "wb") as f:
        for i in range(5):
            f.write(msgpack.packb({"id": f"x{i}", "data": bytes([i]) * 4, "dtype": "uint8",
                                   "shape": [2, 2]}))
    info = store.create_job("mnist", load_items(path), 2, {})
    lease = store.lease_next("n1", 30, now=0)
    assert lease.ids == ["x0", "x1"] and lease.array.shape == (2, 2, 2)
    assert info.shard_count == 3


def test_oldest_job_first_and_model_filter(store):
    first = store.create_job("a", (None, images(2)), 1, {})
    second = store.create_job("b", (None, images(2)), 1, {})
    assert store.lease_next("n", 30, 0, models={"b"}).job_id == second.job_id
    assert store.lease_next("n", 30, 0, models=set()) is None
    assert store.lease_next("n", 30, 0, models={"c"}) is None
    assert store.lease_next("n", 30, 0).job_id == first.job_id
    assert store.lease_next("n", 30, 0, models={"a", "b"}).job_id == first.job_id
    assert store.lease_next("n", 30, 0).job_id == second.job_id


def test_idempotent_submit_with_job_id(store):
    info = job(store, job_id="client-42")
    again = job(store, job_id="client-42")
    assert again.existing and again.job_id == "client-42" and again.shard_count == info.shard_count
    assert len(store.list_jobs()) == 1
    with pytest.raises(JobConflictError, match="client-42"):
        store.create_job("mnist", (None, images(10) + 1), 3, {"k": 1}, job_id="client-42")
    with pytest.raises(JobConflictError):
        store.create_job("mnist", (None, images(10)), 3, {"k": 2}, job_id="client-42")


@pytest.mark.parametrize("kwargs,field", [
    ({"model": ""}, "model"),
    ({"shard_size": 0}, "shard_size"),
    ({"params": {"x": object()}}, "params"),
    ({"job_id": "../etc"}, "job_id"),
])
def test_invalid_create_arguments(store, kwargs, field):
    args = {"model": "m", "items": (None, images(2)), "shard_size": 1, "params": {}} | kwargs
    with pytest.raises(InvalidJobError, match=field):
        store.create_job(**args)
    assert store.list_jobs() == []


# -- exactly once ---------------------------------------------------------------------------


@pytest.mark.parametrize("stale_first", [True, False])
def test_stale_and_current_attempt_give_one_result_per_item(store, stale_first):
    info = job(store, n=3, shard_size=3)
    old = store.lease_next("n1", 10, now=0)
    assert store.requeue_expired(now=10) == [(old.shard_id, "n1")]
    new = store.lease_next("n2", 10, now=11)
    assert (new.shard_id, new.attempt) == (old.shard_id, 2)
    first, second = (old, new) if stale_first else (new, old)
    o1 = store.complete(first.shard_id, first.attempt, answer(first, label=first.attempt))
    o2 = store.complete(second.shard_id, second.attempt, answer(second, label=second.attempt))
    assert (o1.accepted, o1.duplicates, o1.stale) == (3, 0, first is old)
    assert (o2.accepted, o2.duplicates, o2.stale) == (0, 3, second is old)
    rows = one_result_per_item(store, info.job_id)
    assert {r.label for r in rows.values()} == {first.attempt}
    assert store.progress(info.job_id).state == "done"


def test_stale_attempt_fills_unanswered_items_and_finishes_the_shard(store):
    info = job(store, n=4, shard_size=4)
    old = store.lease_next("n1", 10, now=0)
    store.requeue_node("n1")
    new = store.lease_next("n2", 10, now=1)
    store.complete(new.shard_id, new.attempt, answer(new, ids=["0", "1"]))
    assert store.progress(info.job_id).shards_done == 0
    # the current attempt answered only part: its shard went back to the queue
    assert store.progress(info.job_id).shards_leased == 0
    outcome = store.complete(old.shard_id, old.attempt, answer(old))
    assert (outcome.accepted, outcome.duplicates, outcome.stale) == (2, 2, True)
    assert store.progress(info.job_id).state == "done"
    assert store.lease_next("n3", 10, now=2) is None
    rows = one_result_per_item(store, info.job_id)
    assert {i: r.node for i, r in rows.items()} == {"0": "n2", "1": "n2", "2": "n1", "3": "n1"}


def test_duplicate_items_in_one_batch_count_once(store):
    job(store, n=2, shard_size=2)
    lease = store.lease_next("n1", 10, now=0)
    outcome = store.complete(lease.shard_id, 1, answer(lease) + answer(lease))
    assert (outcome.accepted, outcome.duplicates) == (2, 2)


def test_results_are_validated(store):
    info = job(store, n=4, shard_size=2)
    lease = store.lease_next("n1", 10, now=0)
    with pytest.raises(InvalidResultError, match="'3' is not in this shard"):
        store.complete(lease.shard_id, 1, answer(lease, ids=["3"]))
    with pytest.raises(InvalidResultError, match="attempt 2 was never leased"):
        store.complete(lease.shard_id, 2, answer(lease))
    with pytest.raises(InvalidResultError, match="label"):
        store.complete(lease.shard_id, 1, [ResultRow("0", "cat", 0.5, "edge", "n1", "1")])
    with pytest.raises(InvalidResultError, match="confidence"):
        store.complete(lease.shard_id, 1, [ResultRow("0", 1, float("nan"), "edge", "n1", "1")])
    with pytest.raises(ShardNotFoundError):
        store.complete(9999, 1, [])
    assert store.results(info.job_id) == []


# -- release, requeue, expiry, recovery -----------------------------------------------------


def test_release_requeues_only_the_current_attempt(store):
    job(store, n=2, shard_size=2)
    a = store.lease_next("n1", 10, now=0)
    assert store.release(a.shard_id, a.attempt, "interpreter crashed")
    assert not store.release(a.shard_id, a.attempt, "again")  # no longer leased
    b = store.lease_next("n2", 10, now=0)
    assert (b.shard_id, b.attempt, b.ids) == (a.shard_id, 2, a.ids)
    assert not store.release(a.shard_id, a.attempt, "stale")
    assert store.progress(b.job_id).shards_leased == 1
    with pytest.raises(ShardNotFoundError):
        store.release(9999, 1, "x")


def test_repeated_failures_fail_the_job(store_location):
    store = JobStore(store_location, max_failures=2)
    info = job(store, n=4, shard_size=2)
    for _ in range(2):
        lease = store.lease_next("n1", 10, now=0)
        assert lease.shard_id == 1
        store.release(lease.shard_id, lease.attempt, "bad tensor")
    p = store.progress(info.job_id)
    assert p.state == "failed" and "bad tensor" in p.error and p.finished_at is not None
    assert store.lease_next("n1", 10, now=0) is None
    store.close()


def test_unreachable_node_does_not_count_as_a_shard_failure(store_location):
    store = JobStore(store_location, max_failures=1)
    info = job(store, n=2, shard_size=2)
    for _ in range(3):
        lease = store.lease_next("n1", 10, now=0)
        assert store.release(lease.shard_id, lease.attempt, "UNAVAILABLE",
                             counts_as_failure=False)
    assert store.progress(info.job_id).state == "running"
    assert store.lease_next("n1", 10, now=0).attempt == 4
    store.close()


def test_requeue_node_affects_only_that_node(store):
    job(store, n=6, shard_size=2)
    a1 = store.lease_next("n1", 10, now=0)
    b = store.lease_next("n2", 10, now=0)
    a2 = store.lease_next("n1", 10, now=0)
    assert store.requeue_node("n1") == 2
    assert store.requeue_node("n1") == 0
    again = [store.lease_next("n3", 10, now=0) for _ in range(2)]
    assert sorted((x.shard_id, x.attempt) for x in again) == [
        (a1.shard_id, 2), (a2.shard_id, 2)]
    assert store.complete(b.shard_id, b.attempt, answer(b)).stale is False


def test_requeue_expired_with_fake_clock(store):
    job(store, n=4, shard_size=2)
    a = store.lease_next("n1", 10, now=100)
    b = store.lease_next("n2", 20, now=100)
    assert store.requeue_expired(now=109.9) == []
    assert store.requeue_expired(now=110) == [(a.shard_id, "n1")]
    assert store.extend_lease(b.shard_id, b.attempt, 20, now=115)
    assert store.requeue_expired(now=130) == []
    assert not store.extend_lease(a.shard_id, a.attempt, 20, now=115)
    assert store.requeue_expired(now=135) == [(b.shard_id, "n2")]
    assert store.lease_next("n3", 10, now=140).shard_id == a.shard_id


def test_recover_requeues_every_lease_and_payloads_survive_reopen(store_location):
    path = store_location
    store = JobStore(path)
    info = store.create_job("mnist", (["a", "b", "c"], images(3)), 2, {"p": [1, 2]})
    store.lease_next("n1", 10, now=0)
    store.lease_next("n2", 10, now=0)
    store.close()
    store = JobStore(path)
    assert store.recover() == 2
    lease = store.lease_next("n3", 10, now=0)
    assert (lease.ids, lease.attempt, lease.params) == (["a", "b"], 2, {"p": [1, 2]})
    np.testing.assert_array_equal(lease.array, images(3)[:2])
    assert store.progress(info.job_id).shards_leased == 1
    store.close()


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_stops_leasing_and_discards_late_results(store):
    info = job(store, n=6, shard_size=2)
    a = store.lease_next("n1", 10, now=0)
    store.complete(a.shard_id, a.attempt, answer(a))
    b = store.lease_next("n1", 10, now=0)
    p = store.cancel(info.job_id, now=7.0)
    assert (p.state, p.finished_at, p.done_items, p.shards_done, p.shards_leased) == (
        "cancelled", 7.0, 2, 1, 0)
    assert store.lease_next("n1", 10, now=0) is None
    outcome = store.complete(b.shard_id, b.attempt, answer(b))
    assert (outcome.accepted, outcome.discarded) == (0, 2)
    assert [r.item_id for r in store.results(info.job_id)] == ["0", "1"]
    assert store.cancel(info.job_id).state == "cancelled"
    with pytest.raises(JobNotFoundError):
        store.cancel("nope")


def test_shares_count_results_per_node(store):
    info = job(store, n=5, shard_size=2)
    for node in ("a", "b", "a"):
        lease = store.lease_next(node, 10, now=0)
        store.complete(lease.shard_id, lease.attempt, answer(lease))
    assert store.shares(info.job_id) == {"a": 3, "b": 2}
    with pytest.raises(JobNotFoundError):
        store.shares("nope")


def test_list_jobs(store):
    a = job(store)
    b = job(store)
    store.cancel(b.job_id)
    assert [p.job_id for p in store.list_jobs()] == [a.job_id, b.job_id]
    assert [p.job_id for p in store.list_jobs(state="cancelled")] == [b.job_id]


# -- results / resume -----------------------------------------------------------------------


def test_results_after_seq_resume(store_location):
    path = store_location
    store = JobStore(path)
    info = job(store, n=10, shard_size=3)
    while (lease := store.lease_next("n1", 10, now=0)) is not None:
        store.complete(lease.shard_id, lease.attempt, answer(lease))
    everything = store.results(info.job_id)
    store.close()
    store = JobStore(path)
    for k in range(len(everything) + 1):
        after = everything[k - 1].seq if k else 0
        assert store.results(info.job_id, after_seq=after) == everything[k:]
    assert store.results(info.job_id, after_seq=everything[3].seq, limit=2) == everything[4:6]
    with pytest.raises(JobNotFoundError):
        store.results("nope")
    store.close()


def test_concurrent_leases_never_share_a_shard(store):
    job(store, n=200, shard_size=1)
    got: list[tuple[int, int]] = []
    lock = threading.Lock()

    def worker(node):
        while (lease := store.lease_next(node, 10, now=0)) is not None:
            store.complete(lease.shard_id, lease.attempt, answer(lease))
            with lock:
                got.append((lease.shard_id, lease.attempt))

    threads = [threading.Thread(target=worker, args=(f"n{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 200 and len(set(got)) == 200
    assert all(attempt == 1 for _, attempt in got)


# -- what a job survived --------------------------------------------------------------------


def test_jobs_count_their_requeued_shards_and_discarded_duplicates(store_location):
    path = store_location
    store = JobStore(path)
    first = job(store, n=12, shard_size=2)
    other = store.create_job("mnist", (None, images(2)), 2)
    a = store.lease_next("n1", 10, now=0)
    assert store.release(a.shard_id, a.attempt, "INVALID_ARGUMENT", counts_as_failure=True)
    store.lease_next("n1", 10, now=0)
    store.lease_next("n1", 10, now=0)
    assert store.requeue_node("n1") == 2  # a dead or drained node
    store.lease_next("n2", 10, now=0)
    assert len(store.requeue_expired(now=10)) == 1  # a lease that ran out
    partial = store.lease_next("n3", 10, now=20)
    store.complete(partial.shard_id, partial.attempt, answer(partial, ids=partial.ids[:1]))
    late = store.lease_next("n4", 10, now=20)  # the partly answered shard again
    assert late.shard_id == partial.shard_id
    store.complete(late.shard_id, late.attempt, answer(late))  # 1 of 2 already answered
    store.complete(late.shard_id, late.attempt, answer(late))  # both again
    store.lease_next("n5", 10, now=30)
    store.close()
    store = JobStore(path)
    assert store.recover() == 1  # a restarted coordinator
    progress = store.progress(first.job_id)
    assert progress.requeued_shards == 1 + 2 + 1 + 1 + 1
    assert progress.duplicates == 1 + 2
    untouched = store.progress(other.job_id)
    assert (untouched.requeued_shards, untouched.duplicates) == (0, 0)
    store.close()


def test_a_version_2_store_is_upgraded_in_place(tmp_path):
    import sqlite3

    from coordinator.jobs.schema import SCHEMA, SPOOL_SCHEMA, _run

    path = str(tmp_path / "v2.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    _run(db, SCHEMA)
    _run(db, SPOOL_SCHEMA)
    db.execute("PRAGMA user_version=2")
    db.execute("COMMIT")
    db.close()
    store = JobStore(path)
    info = job(store, n=2, shard_size=2)
    lease = store.lease_next("n1", 10, now=0)
    store.requeue_node("n1")
    assert store.progress(info.job_id).requeued_shards == 1
    assert lease.attempt == 1
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()


def test_complete_can_lease_the_nodes_next_shard_in_the_same_commit(store):
    from coordinator.jobs.model import NextLease

    info = job(store, n=6, shard_size=2)
    first = store.lease_next("n1", 10, now=0)
    outcome = store.complete(first.shard_id, first.attempt, answer(first), now=1,
                             then_lease=NextLease("n1", 10, {"mnist"}))
    nxt = outcome.next_lease
    assert outcome.accepted == 2 and nxt is not None
    assert (nxt.node_id, nxt.attempt, nxt.lease_expires) == ("n1", 1, 11)
    assert nxt.shard_id != first.shard_id and len(nxt.ids) == 2
    assert store.progress(info.job_id).shards_leased == 1  # the new one; the first is done
    other = store.complete(nxt.shard_id, nxt.attempt, answer(nxt),
                           then_lease=NextLease("n1", 10, {"another-model"}))
    assert other.next_lease is None  # nothing queued for the models it serves
    assert store.lease_next("n2", 10, now=0) is not None  # the last shard is still queued


def test_a_replica_requeues_only_the_leases_of_replicas_that_stopped(pg_url):
    a, b = JobStore(pg_url, replica_id="a"), JobStore(pg_url, replica_id="b")
    try:
        info = job(a, n=6, shard_size=2)
        a.heartbeat("a:1")
        b.heartbeat("b:1")
        held_by_a = a.lease_next("n1", 60, now=0)
        held_by_b = b.lease_next("n2", 60, now=0)
        assert b.requeue_orphans(timeout_s=60) == []  # a is alive: its lease stays
        assert a.progress(info.job_id).shards_leased == 2
        time.sleep(0.05)
        b.heartbeat("b:1")
        # a has not been seen for longer than this: it died with its pullers
        assert b.requeue_orphans(timeout_s=0.02) == [(held_by_a.shard_id, "n1")]
        progress = b.progress(info.job_id)
        assert (progress.shards_leased, progress.requeued_shards) == (1, 1)
        again = b.lease_next("n3", 60, now=0)
        assert again.shard_id == held_by_a.shard_id and again.attempt == 2
        assert held_by_b.shard_id != again.shard_id
    finally:
        a.close()
        b.close()


def test_operator_drains_are_kept_in_the_store(store_location):
    from coordinator.jobs.drains import DrainBook

    store = JobStore(store_location)
    try:
        book = DrainBook(store.database)
        book.record("node-7", True)
        book.record("node-7", True)  # again: no error, one entry
        book.record("10.0.0.9:8001", True)
        assert book.drained() == {"node-7", "10.0.0.9:8001"}
        book.record("node-7", False)
        book.record("never-drained", False)
    finally:
        store.close()
    reopened = JobStore(store_location)  # a restart keeps them
    try:
        assert DrainBook(reopened.database).drained() == {"10.0.0.9:8001"}
    finally:
        reopened.close()


def test_a_version_3_store_keeps_its_results_and_resume_points(tmp_path):
    """Per-item result rows (v3) become blocks that keep their seqs; the shards keep their
    items, answered items stay answered, and new results continue after the old seqs."""
    import io
    import json
    import sqlite3

    import msgpack

    from coordinator.jobs.schema import COUNTERS_SCHEMA, SCHEMA, SPOOL_SCHEMA, _run

    path = str(tmp_path / "v3.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    for script in (SCHEMA, SPOOL_SCHEMA, COUNTERS_SCHEMA):
        _run(db, script)
    db.execute("INSERT INTO jobs (job_id, model, state, params, shard_size, total_items, "
               "done_items, dtype, item_shape, digest, created_at) VALUES ('old', 'mnist', "
               "'running', '{}', 2, 4, 1, '|u1', '[2, 2]', 'd', 0)")
    for idx, ids in enumerate([["a", "b"], ["c", "d"]]):
        buf = io.BytesIO()
        np.save(buf, np.full((2, 2, 2), idx, np.uint8))
        db.execute("INSERT INTO shards (job_id, idx, state, attempt, item_count, item_ids, "
                   "payload) VALUES ('old', ?, ?, 1, 2, ?, ?)",
                   (idx, "leased" if idx == 0 else "queued", msgpack.packb(ids),
                    buf.getvalue()))
    db.execute("INSERT INTO results (seq, job_id, item_id, shard_id, attempt, label, confidence, "
               "tier, node, model_version, extra) VALUES (41, 'old', 'a', 1, 1, 7, 0.5, "
               "'edge', 'n1', '1', ?)", (json.dumps({"k": 1}),))
    db.execute("INSERT INTO job_nodes (job_id, node, items) VALUES ('old', 'n1', 1)")
    db.execute("PRAGMA user_version=3")
    db.execute("COMMIT")
    db.close()

    store = JobStore(path)
    try:
        [old] = store.results("old")
        assert (old.item_id, old.seq, old.label, old.extra) == ("a", 41, 7, {"k": 1})
        outcome = store.complete(1, 1, [ResultRow(i, 1, 0.9, "edge", "n2", "1")
                                        for i in ("a", "b")])
        assert (outcome.accepted, outcome.duplicates) == (1, 1)  # "a" stays answered
        lease = store.lease_next("n2", 10, now=0)
        assert lease.ids == ["c", "d"] and (lease.array == 1).all()
        store.complete(lease.shard_id, lease.attempt, answer(lease))
        rows = store.results("old")
        assert [r.item_id for r in rows] == ["a", "b", "c", "d"]
        assert rows[0].seq == 41 and all(r.seq > 41 for r in rows[1:])
        assert store.results("old", after_seq=41) == rows[1:]
        assert store.progress("old").state == "done"
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        store.close()


# -- owners (schema version 5) ----------------------------------------------------------------

def test_a_job_keeps_its_owner_and_jobs_list_by_owner(store_location):
    store = JobStore(store_location)
    try:
        a = job(store, n=2, owner="alice")
        b = job(store, n=2, owner="bob")
        job(store, n=2)  # submitted without authentication: nobody's
        assert store.progress(a.job_id).owner == "alice" and a.owner == "alice"
        assert [p.job_id for p in store.list_jobs(owner="bob")] == [b.job_id]
        assert [p.owner for p in store.list_jobs()] == ["alice", "bob", ""]
        assert store.list_jobs(state="running", owner="nobody") == []
        again = job(store, n=2, job_id=a.job_id, owner="bob")  # the caller decides
        assert again.existing and again.owner == "alice"
    finally:
        store.close()


def test_a_version_4_postgresql_store_gains_owners(pg_url):
    store = JobStore(pg_url)
    info = job(store, n=2, owner="alice")
    store.database.write(lambda db: (db.execute("ALTER TABLE jobs DROP COLUMN owner"),
                                     [db.execute(d) for d in drops_after(4)],
                                     db.execute("UPDATE edgeshard_schema SET version = 4")))
    store.close()
    store = JobStore(pg_url)  # upgraded in place: the old job is nobody's
    try:
        assert store.progress(info.job_id).owner == ""
        assert job(store, n=2, owner="bob").owner == "bob"
        version = store.database.read(
            lambda db: db.execute("SELECT version FROM edgeshard_schema").fetchone()[0])
        assert version == SCHEMA_VERSION
    finally:
        store.close()


def test_jobs_are_listed_page_by_page(store_location):
    store = JobStore(store_location)
    try:
        ids = [job(store, n=1, owner="a" if k % 2 else "b").job_id for k in range(5)]
        assert [p.job_id for p in store.list_jobs(limit=2)] == ids[:2]
        assert [p.job_id for p in store.list_jobs(after_job=ids[1], limit=2)] == ids[2:4]
        assert [p.job_id for p in store.list_jobs(after_job=ids[3])] == ids[4:]
        assert [p.job_id for p in store.list_jobs(owner="a", after_job=ids[0])] == \
            [ids[1], ids[3]]
        with pytest.raises(JobNotFoundError):
            store.list_jobs(after_job="nope")
    finally:
        store.close()
