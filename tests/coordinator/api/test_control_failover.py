"""``CoordinatorClient`` with several addresses: unary calls and Submit move on from a
coordinator that does not answer; FetchResults and Watch survive the coordinator that
serves them (here one that is killed and restarted on its port and state dir, since two
coordinators on SQLite cannot share jobs)."""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter

import grpc
import numpy as np
import pytest

import edgeshard_models
from coordinator.api.control_client import CoordinatorClient
from coordinator.jobs.items import ItemSource

EDGE = edgeshard_models.EDGE_MODEL
pytestmark = pytest.mark.timeout(180)
PACED = ("--max-batch-delay-ms", "10")  # a job of a few thousand items lasts seconds


def closed_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def client_for():
    clients = []

    def make(*args, **kwargs) -> CoordinatorClient:
        clients.append(CoordinatorClient(*args, **kwargs))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


def test_unary_calls_and_submit_move_on_to_the_coordinator_that_answers(
        fleet, holdout, client_for, caplog):
    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)
    dead, live = closed_address(), fleet.coordinator.address
    caplog.set_level(logging.INFO, logger="coordinator.api.control_client")

    client = client_for(f"{dead},{live}")
    assert client.addresses == (dead, live) and client.address == dead
    assert [n.node_id for n in client.nodes()] == ["n0"]
    assert client.address == live  # and it stays there
    moves = [r.getMessage() for r in caplog.records]
    assert len(moves) == 1 and moves[0].startswith(f"coordinator {dead}: UNAVAILABLE")
    assert moves[0].endswith(f"failing over to {live}")

    # Submit is made again from its first message on the next coordinator.
    items = ItemSource.from_arrays(None, holdout[0][:40])
    status = client_for([dead, live]).submit(EDGE, items, job_id="failover-job")
    assert (status.job_id, status.total_items) == ("failover-job", 40)
    again = client_for([dead, live])
    assert again.get("failover-job").job_id == "failover-job"
    assert [j.job_id for j in client_for([dead, live]).list_jobs()] == ["failover-job"]
    assert client_for([dead, live]).cancel("failover-job").job_id == "failover-job"
    # The same job id and items on another coordinator (or again) is the same job.
    assert again.submit(EDGE, items, job_id="failover-job").job_id == "failover-job"
    assert len(again.list_jobs()) == 1


def test_when_none_answers_each_is_asked_once_and_the_last_error_raised(client_for, caplog):
    first, second, third = closed_address(), closed_address(), closed_address()
    caplog.set_level(logging.INFO, logger="coordinator.api.control_client")
    client = client_for([first, second, third])
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        client.list_jobs(timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert third.split(":")[1] in failed.value.details()  # the last one's error
    assert time.monotonic() - started < 5
    assert [r.getMessage().split(":")[:2] for r in caplog.records] == [
        ["coordinator 127.0.0.1", first.split(":")[1]],
        ["coordinator 127.0.0.1", second.split(":")[1]]]
    assert not client.connect(0.5)


def test_a_call_the_coordinator_refuses_is_not_asked_elsewhere(fleet, client_for):
    fleet.start_coordinator()
    dead = closed_address()
    client = client_for([fleet.coordinator.address, dead])
    with pytest.raises(grpc.RpcError) as failed:
        client.get("no-such-job")
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert client.address == fleet.coordinator.address


def test_results_and_watch_resume_after_the_coordinator_restarts(fleet, holdout, client_for,
                                                                 caplog):
    fleet.start_coordinator()
    for i in range(2):
        fleet.add_node(f"n{i}", *PACED)
    fleet.wait_live(2)
    images = np.tile(holdout[0], (6, 1, 1))
    ids = [f"i{k}" for k in range(len(images))]
    client = client_for(fleet.coordinator.address, reconnect_s=60)
    status = client.submit(EDGE, ItemSource.from_arrays(ids, images), shard_size=16)
    caplog.set_level(logging.INFO, logger="coordinator.api.control_client")

    results = client.results(status.job_id, follow=True, timeout=150)
    watch = client.watch(status.job_id, interval=0.1, timeout=150)
    first = [next(results) for _ in range(40)]
    assert next(watch).state == "running"
    assert client.get(status.job_id).done_items < len(ids)  # the job goes on meanwhile
    port = fleet.coordinator.info["grpc_port"]
    fleet.coordinator.kill()  # SIGKILL mid-stream; its SQLite job store stays
    fleet.start_coordinator("--port", str(port), name="coordinator-2")

    records = first + list(results)  # resumed after the last seq it delivered
    statuses = list(watch)  # subscribed again
    assert statuses[-1].state == "done" and statuses[-1].done_items == len(ids)
    counts = Counter(r.id for r in records)
    assert set(counts) == set(ids) and max(counts.values()) == 1  # no gap, no duplicate
    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    stored = [(r.seq, r.id) for r in client.results(status.job_id)]
    assert [(r.seq, r.id) for r in records] == stored
    assert any(r.getMessage().startswith(f"coordinator {fleet.coordinator.address}: ")
               and r.getMessage().endswith("; reconnecting") for r in caplog.records)


def test_a_follow_stream_cut_by_a_stopping_coordinator_is_an_error_not_an_end(
        fleet, holdout, client_for):
    # A coordinator that stops ends its streams cleanly: the client asks whether the
    # job finished before it ends the results; with nobody left to ask, UNAVAILABLE.
    fleet.start_coordinator()
    fleet.add_node("n0", *PACED)
    fleet.wait_live(1)
    images = np.tile(holdout[0], (6, 1, 1))
    client = client_for(fleet.coordinator.address, reconnect_s=1)
    status = client.submit(EDGE, ItemSource.from_arrays(None, images), shard_size=16)
    results = client.results(status.job_id, follow=True, timeout=60)
    got = [next(results) for _ in range(10)]
    fleet.coordinator.stop(grace=5)
    with pytest.raises(grpc.RpcError) as cut:
        got.extend(results)
    assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(got) < len(images)
