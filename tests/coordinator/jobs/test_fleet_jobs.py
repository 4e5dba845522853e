"""Sharded jobs on a real fleet (coordinator + edge-node processes on loopback):
nothing lost, nothing repeated, whatever happens to the nodes or the coordinator."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import numpy as np
import pytest

import edgeshard_models
from coordinator.jobs.items import ItemSource
from coordinator.jobs.store import JobStore

EDGE = edgeshard_models.EDGE_MODEL
pytestmark = pytest.mark.timeout(180)
# Nodes wait up to 10 ms to fill a batch: a job of a few thousand items then lasts a few
# seconds (like a fleet of small devices), long enough to break things part-way.
PACED = ("--max-batch-delay-ms", "10")


@pytest.fixture(params=["sqlite", "postgresql"])
def fleet(request, tmp_path, shipped_repository):
    """A ``Fleet`` whose coordinator keeps its jobs in SQLite, then in PostgreSQL: every
    guarantee below holds on both backends."""
    from tests.conftest import Fleet

    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    f = Fleet(tmp_path, shipped_repository, state_url=url)
    yield f
    f.close()


def job_items(holdout, repeat: int) -> tuple[ItemSource, dict[str, int]]:
    images, labels = holdout
    ids = [f"{r}-{i}" for r in range(repeat) for i in range(len(images))]
    truth = dict(zip(ids, np.tile(labels, repeat).tolist(), strict=True))
    return ItemSource.from_arrays(ids, np.tile(images, (repeat, 1, 1))), truth


def wait_done_items(client, job_id: str, at_least: int, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(job_id)
        if status.done_items >= at_least or status.state != "running":
            return status
        time.sleep(0.02)
    raise AssertionError(f"job stuck at {status.done_items} items")


def wait_finished(client, job_id: str, timeout: float = 120.0):
    for status in client.watch(job_id, interval=0.1, timeout=timeout):
        if status.state != "running":
            return status
    return client.get(job_id)


def check_exactly_once(client, job_id: str, truth: dict[str, int], min_accuracy=0.9):
    records = list(client.results(job_id))
    counts = Counter(r.id for r in records)
    assert set(counts) == set(truth), "every item has a result"
    assert max(counts.values()) == 1, "no item has two results"
    accuracy = np.mean([truth[r.id] == r.label for r in records])
    assert accuracy >= min_accuracy
    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    return records


@pytest.mark.fault
def test_job_survives_a_node_killed_part_way(fleet, holdout):
    fleet.start_coordinator()
    for i in range(3):
        fleet.add_node(f"n{i}", *PACED)
    fleet.wait_live(3)
    items, truth = job_items(holdout, 8)
    status = fleet.client.submit(EDGE, items, shard_size=16)
    assert status.total_items == len(truth) and status.shards_total == -(-len(truth) // 16)
    wait_done_items(fleet.client, status.job_id, len(truth) // 4)
    fleet.nodes[1].kill()
    final = wait_finished(fleet.client, status.job_id)
    assert final.state == "done", final
    records = check_exactly_once(fleet.client, status.job_id, truth)
    shares = Counter(r.node for r in records)
    assert set(shares) <= {"n0", "n1", "n2"} and shares["n0"] and shares["n2"]
    states = {n.node_id: n.state for n in fleet.client.nodes()}
    assert states["n1"] in ("suspect", "dead")


@pytest.mark.fault
def test_stopped_node_shards_are_requeued_after_the_deadline(fleet, holdout):
    fleet.start_coordinator()
    for i in range(3):
        fleet.add_node(f"n{i}", *PACED)
    fleet.wait_live(3)
    items, truth = job_items(holdout, 6)
    status = fleet.client.submit(EDGE, items, shard_size=16)
    wait_done_items(fleet.client, status.job_id, len(truth) // 4)
    stopped = fleet.nodes[0]
    os.kill(stopped.process.pid, signal.SIGSTOP)
    try:
        final = wait_finished(fleet.client, status.job_id)
        assert final.state == "done", final
        assert final.requeued_shards >= 1, final  # the stopped node's shards, reported
        check_exactly_once(fleet.client, status.job_id, truth)
        states = {n.node_id: n.state for n in fleet.client.nodes()}
        assert states["n0"] in ("suspect", "dead")
    finally:
        os.kill(stopped.process.pid, signal.SIGCONT)


@pytest.mark.fault
def test_coordinator_sigkill_and_restart_resumes_the_job(fleet, holdout):
    fleet.start_coordinator()
    for i in range(2):
        fleet.add_node(f"n{i}", *PACED)
    fleet.wait_live(2)
    items, truth = job_items(holdout, 8)
    status = fleet.client.submit(EDGE, items, shard_size=16, job_id="restart-job")
    wait_done_items(fleet.client, status.job_id, len(truth) // 3)
    port = fleet.coordinator.info["grpc_port"]
    fleet.coordinator.kill()  # SIGKILL mid-job
    store = JobStore(fleet.store_location)  # what was committed at the kill
    before = {r.item_id: (r.seq, r.label, r.node) for r in store.results(status.job_id)}
    assert store.progress(status.job_id).state == "running"
    store.close()
    assert 0 < len(before) < len(truth)

    # Restart on the same state dir and port: the nodes' heartbeats are answered
    # "reregister" and they join the new process by themselves.
    fleet.start_coordinator("--port", str(port), name="coordinator-2")
    fleet.wait_live(2)
    final = wait_finished(fleet.client, status.job_id)
    assert final.state == "done", final
    records = check_exactly_once(fleet.client, status.job_id, truth)
    after = {r.id: (r.seq, r.label, r.node) for r in records}
    for item, committed in before.items():
        assert after[item] == committed, "a delivered result changed after the restart"
    # Resubmitting the same job id is idempotent: same job, nothing added.
    again = fleet.client.submit(EDGE, items, shard_size=16, job_id="restart-job")
    assert again.job_id == "restart-job" and again.done_items == len(truth)


def test_node_added_mid_job_takes_a_share(fleet, holdout):
    fleet.start_coordinator()
    fleet.add_node("n0", *PACED)
    fleet.wait_live(1)
    items, truth = job_items(holdout, 12)
    status = fleet.client.submit(EDGE, items, shard_size=16)
    wait_done_items(fleet.client, status.job_id, len(truth) // 10)
    fleet.add_node("late", *PACED)
    final = wait_finished(fleet.client, status.job_id)
    assert final.state == "done"
    records = check_exactly_once(fleet.client, status.job_id, truth)
    shares = Counter(r.node for r in records)
    assert shares["late"] > 0, shares
    reported = {s.node: s.items for s in final.shares}
    assert reported == dict(shares)


def test_drained_node_gets_no_new_shards(fleet, holdout):
    fleet.start_coordinator()
    for i in range(2):
        fleet.add_node(f"n{i}", *PACED)
    fleet.wait_live(2)
    info = fleet.client.drain("n0")
    assert info.state == "draining"
    items, truth = job_items(holdout, 2)
    status = fleet.client.submit(EDGE, items, shard_size=16)
    wait_finished(fleet.client, status.job_id)
    records = check_exactly_once(fleet.client, status.job_id, truth)
    assert {r.node for r in records} == {"n1"}
    assert fleet.client.drain("n0", undo=True).state == "live"


def test_an_undrained_node_takes_job_work_again(fleet, holdout):
    # A drained node's pullers stop; undraining must start them again (it did not: the
    # node stayed live for online requests but never pulled another shard).
    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)
    fleet.client.drain("n0")
    assert fleet.client.drain("n0", undo=True).state == "live"
    items, truth = job_items(holdout, 1)
    status = fleet.client.submit(EDGE, items, shard_size=64)
    final = wait_finished(fleet.client, status.job_id, timeout=60)
    assert final.state == "done", final
    records = check_exactly_once(fleet.client, status.job_id, truth)
    assert {r.node for r in records} == {"n0"}


def test_cancel_stops_a_job(fleet, holdout):
    fleet.start_coordinator("--metrics-port", "0")
    fleet.add_node("n0", *PACED)
    fleet.wait_live(1)
    items, truth = job_items(holdout, 20)
    status = fleet.client.submit(EDGE, items, shard_size=16)
    wait_done_items(fleet.client, status.job_id, 100)
    cancelled = fleet.client.cancel(status.job_id)
    assert cancelled.state == "cancelled"
    time.sleep(0.5)
    final = fleet.client.get(status.job_id)
    assert final.state == "cancelled" and final.done_items < len(truth)
    assert len(list(fleet.client.results(status.job_id))) == final.done_items
    # the job-progress gauges, read from the store every 5 s
    import urllib.request

    url = f"http://127.0.0.1:{fleet.coordinator.info['metrics_port']}/metrics"
    want = ['edgeshard_coordinator_jobs{state="cancelled"} 1.0',
            'edgeshard_coordinator_jobs{state="running"} 0.0',
            "edgeshard_coordinator_job_items_remaining 0.0"]
    deadline = time.monotonic() + 15
    while True:
        page = urllib.request.urlopen(url, timeout=10).read().decode().splitlines()
        if all(w in page for w in want) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(w in page for w in want), [x for x in page if "_jobs" in x or "remaining" in x]


def test_results_name_their_label_from_the_model_config(fleet, holdout):
    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)
    images, labels = holdout
    status = fleet.client.submit(EDGE, ItemSource.from_arrays(None, images[:50]))
    assert wait_finished(fleet.client, status.job_id).state == "done"
    records = list(fleet.client.results(status.job_id))
    assert len(records) == 50
    for r in records:  # mnist_edge's config.toml names its classes "0".."9"
        assert r.extra["label_name"] == str(r.label)
        assert f'"label_name": "{r.label}"' in r.as_json()
