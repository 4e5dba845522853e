"""Streams cannot exhaust the coordinator: bounded per method, bounded intervals, and a
stream whose client goes away ends at once (real coordinator and node processes)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

import edgeshard_models
from coordinator.jobs.items import ItemSource
from protos import fleet_pb2, fleet_pb2_grpc

EDGE = edgeshard_models.EDGE_MODEL
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def running_job(fleet):
    """A coordinator (max 4 streams per method) with a job that stays running: its only
    node is drained."""
    fleet.start_coordinator("--max-streams", "4")
    fleet.add_node("n0")
    fleet.wait_live(1)
    fleet.client.drain("n0")
    status = fleet.client.submit(EDGE, ItemSource.from_arrays(
        None, np.zeros((8, 28, 28), np.uint8)))
    assert status.state == "running"
    channel = grpc.insecure_channel(fleet.coordinator.address)
    yield fleet, fleet_pb2_grpc.JobsStub(channel), status.job_id
    channel.close()


def open_watches(jobs, job_id: str, n: int, interval: float = 60.0) -> list:
    calls = []
    for _ in range(n):
        call = jobs.Watch(fleet_pb2.WatchRequest(job_id=job_id, interval_s=interval),
                          timeout=60)
        assert next(call).job_id == job_id  # the stream is open and holds its slot
        calls.append(call)
    return calls


def test_streams_per_method_are_bounded_and_freed_when_clients_leave(running_job):
    fleet, jobs, job_id = running_job
    watches = open_watches(jobs, job_id, 4)
    with pytest.raises(grpc.RpcError) as err:
        next(jobs.Watch(fleet_pb2.WatchRequest(job_id=job_id, interval_s=60), timeout=10))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Watch" in err.value.details() and "max_streams" in err.value.details()
    # Unary calls still find a handler thread while the streams sleep.
    started = time.monotonic()
    assert fleet.client.nodes(timeout=5)[0].node_id == "n0"
    assert jobs.GetJob(fleet_pb2.JobRef(job_id=job_id), timeout=5).state == "running"
    assert time.monotonic() - started < 5
    # Another method has its own bound.
    follow = jobs.FetchResults(fleet_pb2.FetchResultsRequest(job_id=job_id, follow=True),
                               timeout=30)
    for call in watches:
        call.cancel()
    deadline = time.monotonic() + 10  # the 60 s sleepers wake as soon as their client left
    while True:
        try:
            again = open_watches(jobs, job_id, 4)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline, "cancelled streams kept their slots"
            time.sleep(0.2)
    for call in again:
        call.cancel()
    follow.cancel()


@pytest.mark.parametrize("request_fields,field", [
    ({"interval_s": 1e6}, "interval_s"),
    ({"interval_s": -1}, "interval_s"),
    ({"interval_s": float("nan")}, "interval_s"),
])
def test_watch_interval_is_bounded(running_job, request_fields, field):
    _, jobs, job_id = running_job
    with pytest.raises(grpc.RpcError) as err:
        next(jobs.Watch(fleet_pb2.WatchRequest(job_id=job_id, **request_fields), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_many_abandoned_watches_do_not_stop_heartbeats_or_inference(fleet):
    # The reported fault: 64 Watch streams with a huge interval, abandoned by their
    # clients, left every handler thread asleep. With the default bound, most are
    # refused, and those admitted end when their clients leave.
    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)
    status = fleet.client.submit(EDGE, ItemSource.from_arrays(
        None, np.zeros((4, 28, 28), np.uint8)))
    channel = grpc.insecure_channel(fleet.coordinator.address)
    jobs = fleet_pb2_grpc.JobsStub(channel)
    codes = []
    calls = []

    def watch():
        call = jobs.Watch(fleet_pb2.WatchRequest(job_id=status.job_id, interval_s=60),
                          timeout=60)
        calls.append(call)
        try:
            for _ in call:
                pass
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)

    threads = [threading.Thread(target=watch) for _ in range(64)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    for call in calls:
        call.cancel()
    for t in threads:
        t.join(20)
    assert len(codes) == 64
    nodes = fleet.client.nodes(timeout=5)
    assert nodes[0].state == "live"  # heartbeats and probes kept it live
    from coordinator.api.clients import OIPClient

    client = OIPClient(fleet.coordinator.address)
    try:
        answer = client.classify(EDGE, np.zeros((1, 28, 28), np.uint8), timeout=5)
        assert answer.label.shape == (1,)
    finally:
        client.close()
    channel.close()


def test_a_client_that_leaves_mid_upload_is_not_an_error(fleet):
    # A Submit whose client process exits after the header: no ERROR or traceback in the
    # coordinator's log, whether it notices at once or only when it stops (its shutdown
    # cancels the stream), and it keeps serving meanwhile.
    import subprocess
    import sys

    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)
    client = f"""
import os, sys, time, grpc
sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})
from protos import fleet_pb2, fleet_pb2_grpc
jobs = fleet_pb2_grpc.JobsStub(grpc.insecure_channel({fleet.coordinator.address!r}))
def messages():
    yield fleet_pb2.SubmitRequest(header=fleet_pb2.JobHeader(model="mnist_edge"))
    time.sleep(1.0)
    os._exit(0)
jobs.Submit(messages(), timeout=30)
"""
    subprocess.run([sys.executable, "-c", client], timeout=60, check=False)
    assert fleet.client.list_jobs() == []  # nothing half-submitted, still serving
    fleet.coordinator.stop(grace=5)
    log = fleet.coordinator.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
