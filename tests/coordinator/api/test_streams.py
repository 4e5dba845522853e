"""Streams cannot exhaust the coordinator: they hold no thread (1,000 at once leave
unary calls, heartbeats and inference answering), are bounded per method, have bounded
intervals, and end at once when their client goes away (real coordinator and node
processes)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

import edgeshard_models
from coordinator.jobs.items import ItemSource
from protos import fleet_pb2, fleet_pb2_grpc

EDGE = edgeshard_models.EDGE_MODEL
CLOUD = edgeshard_models.CLOUD_MODEL
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def running_job(fleet):
    """A coordinator (at most 4 Watch and 4 FetchResults streams) with a job that stays
    running: its only node is drained."""
    fleet.start_coordinator("--max-followers", "4")
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
    assert "Watch" in err.value.details() and "max_followers" in err.value.details()
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


STREAMS = 1000  # half Watch, half FetchResults(follow)


def followers(coordinator) -> float:
    url = f"http://127.0.0.1:{coordinator.info['metrics_port']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return next(float(line.split()[1]) for line in text.splitlines()
                if line.startswith("edgeshard_coordinator_job_followers "))


def test_a_thousand_following_streams_hold_no_thread(fleet, tmp_path):
    fleet.start_coordinator("--metrics-port", "0")
    fleet.add_node("n0")
    cloud_only = tmp_path / "cloud-only"
    shutil.copytree(fleet.repository / CLOUD, cloud_only / CLOUD)
    fleet.add_node("n1", "--model-repository", str(cloud_only))  # for online requests
    fleet.wait_live(2)
    fleet.client.drain("n0")  # the job waits, its followers with it
    ids = [f"item-{i}" for i in range(8)]
    status = fleet.client.submit(EDGE, ItemSource.from_arrays(
        ids, np.zeros((8, 28, 28), np.uint8)))
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()

    async def follow_all():
        channels = [grpc.aio.insecure_channel(fleet.coordinator.address) for _ in range(10)]
        try:
            async def watch(jobs):
                return [s.state async for s in jobs.Watch(
                    fleet_pb2.WatchRequest(job_id=status.job_id, interval_s=1), timeout=120)]

            async def fetch(jobs):
                return [r.id async for r in jobs.FetchResults(fleet_pb2.FetchResultsRequest(
                    job_id=status.job_id, follow=True), timeout=120)]

            stubs = [fleet_pb2_grpc.JobsStub(c) for c in channels]
            calls = [(watch if k % 2 else fetch)(stubs[k % 10]) for k in range(STREAMS)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            for c in channels:
                await c.close()

    outcome = asyncio.run_coroutine_threadsafe(follow_all(), loop)
    try:
        deadline = time.monotonic() + 60
        while followers(fleet.coordinator) < STREAMS:
            assert time.monotonic() < deadline and not outcome.done(), \
                f"{followers(fleet.coordinator)} of {STREAMS} streams open"
            time.sleep(0.2)
        # Every stream is open and waiting: unary calls, heartbeats and inference answer.
        from coordinator.api.clients import OIPClient

        client = OIPClient(fleet.coordinator.address)
        try:
            for _ in range(3):
                started = time.monotonic()
                assert fleet.client.nodes(timeout=5)[0].node_id == "n0"
                assert fleet.client.get(status.job_id, timeout=5).state == "running"
                answer = client.classify(CLOUD, np.zeros((1, 28, 28), np.uint8), timeout=5)
                assert answer.label.shape == (1,)
                print(f"ListNodes + GetJob + ModelInfer with {STREAMS} streams open: "
                      f"{(time.monotonic() - started) * 1000:.1f} ms")
                time.sleep(1.0)
        finally:
            client.close()
        states = {n.node_id: n.state for n in fleet.client.nodes(timeout=5)}
        assert states == {"n0": "draining", "n1": "live"}  # heartbeats kept both live
        fleet.client.drain("n0", undo=True)
        results = outcome.result(timeout=120)
    finally:
        loop.call_soon_threadsafe(loop.stop)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    for k, got in enumerate(results):
        if k % 2:
            assert got[-1] == "done"
        else:
            assert sorted(got) == ids  # every result, once, on every stream


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
