"""The cascade with real processes: an edge-node serving the cloud model is the cloud tier."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import tritonclient.grpc as tc

import edgeshard_models
from coordinator.cli.launcher import start_node
from coordinator.jobs.items import ItemSource
from coordinator.jobs.store import JobStore
from protos import fleet_pb2

EDGE, CLOUD = edgeshard_models.EDGE_MODEL, edgeshard_models.CLOUD_MODEL
pytestmark = pytest.mark.timeout(240)
PACED = ("--max-batch-delay-ms", "10")
RULE = ("--cascade", f"{EDGE}={CLOUD}", "--escalation", f"{EDGE}=max_prob:0.9",
        "--breaker-failures", "2", "--breaker-reset-s", "0.5", "--cloud-timeout-s", "2")


def start_cloud(fleet, port: int = 0, name: str = "cloud"):
    args = ["--workers", "1"] + (["--port", str(port)] if port else [])
    proc = start_node(name, fleet.repository, fleet.workdir, extra_args=args)
    fleet.nodes.append(proc)
    return proc


def items(holdout, repeat):
    images, labels = holdout
    ids = [f"{r}-{i}" for r in range(repeat) for i in range(len(images))]
    truth = dict(zip(ids, np.tile(labels, repeat).tolist(), strict=True))
    return ItemSource.from_arrays(ids, np.tile(images, (repeat, 1, 1))), truth


def finish(client, job_id, timeout=150):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(job_id)
        if status.state != "running":
            return status
        time.sleep(0.1)
    raise AssertionError(f"job not finished: {client.get(job_id)}")


def test_job_escalates_low_confidence_items_to_the_cloud(fleet, holdout):
    cloud = start_cloud(fleet)
    fleet.start_coordinator("--cloud", cloud.address, *RULE)
    fleet.add_node("edge-1")
    fleet.wait_live(1)
    source, truth = items(holdout, 1)
    status = fleet.client.submit(EDGE, source, shard_size=32)
    final = finish(fleet.client, status.job_id)
    assert final.state == "done" and final.pending_escalations == 0
    records = list(fleet.client.results(status.job_id))
    assert Counter(r.id for r in records) == Counter(set(truth))  # exactly one each
    tiers = Counter(r.tier for r in records)
    assert 0 < tiers["cloud"] < len(records) * 0.5, tiers
    assert final.cloud_answered == tiers["cloud"]
    for r in records:
        assert "edge_label" in r.extra and "edge_confidence" in r.extra
        if r.tier == "cloud":
            assert r.extra["escalated"] and r.label == r.extra["cloud_label"]
            assert r.extra["edge_confidence"] < 0.9
        else:
            assert r.extra["edge_confidence"] >= 0.9 - 1e-6
    cascade = np.mean([truth[r.id] == r.label for r in records])
    edge_only = np.mean([truth[r.id] == r.extra["edge_label"] for r in records])
    assert cascade > edge_only


def test_cloud_outage_spools_and_drains_and_survives_a_coordinator_kill(fleet, holdout):
    cloud = start_cloud(fleet)
    cloud_port = cloud.info["grpc_port"]
    fleet.start_coordinator("--cloud", cloud.address, *RULE)
    coord_port = fleet.coordinator.info["grpc_port"]
    fleet.add_node("edge-1", *PACED)
    fleet.wait_live(1)
    source, truth = items(holdout, 4)
    status = fleet.client.submit(EDGE, source, shard_size=32)
    while fleet.client.get(status.job_id).done_items < len(truth) // 5:
        time.sleep(0.02)
    cloud.kill()  # the cloud goes away mid-job
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # every shard handled: confident items final, rest spooled
        st = fleet.client.get(status.job_id)
        if st.shards_done == st.shards_total:
            break
        time.sleep(0.1)
    assert st.state == "running" and st.pending_escalations > 0
    assert st.done_items + st.pending_escalations == len(truth)
    spooled = st.pending_escalations
    # The job keeps answering: every item has an answer, the spooled ones degraded.
    now = list(fleet.client.results(status.job_id, include_pending=True))
    assert Counter(r.id for r in now) == Counter(set(truth))
    provisional = [r for r in now if r.provisional]
    assert len(provisional) == spooled
    assert all(r.tier == "edge" and r.extra["degraded"] and r.seq == 0 for r in provisional)

    fleet.coordinator.kill()  # SIGKILL with a non-empty spool
    store = JobStore(str(fleet.state_dir / "jobs.sqlite3"))
    from coordinator.jobs.spool_queue import SpoolQueue

    assert SpoolQueue(store).totals()[0] == spooled  # nothing accepted was lost
    store.close()
    fleet.start_coordinator("--port", str(coord_port), "--cloud", f"127.0.0.1:{cloud_port}",
                            *RULE, name="coordinator-2")
    time.sleep(1.0)
    assert fleet.client.get(status.job_id).pending_escalations == spooled  # still away
    start_cloud(fleet, port=cloud_port, name="cloud-back")
    final = finish(fleet.client, status.job_id)
    assert final.state == "done" and final.pending_escalations == 0
    records = list(fleet.client.results(status.job_id))
    assert Counter(r.id for r in records) == Counter(set(truth))  # exactly one each
    spooled_records = [r for r in records if r.extra.get("spooled")]
    assert len(spooled_records) == spooled
    assert all(r.tier == "cloud" and not r.extra["degraded"] for r in spooled_records)
    before_outage = [r for r in records if r.tier == "cloud" and not r.extra.get("spooled")]
    assert before_outage  # escalations answered directly before the cloud went away


def test_budget_caps_what_the_cloud_sees(fleet, holdout):
    cloud = start_cloud(fleet)
    budget = 40
    fleet.start_coordinator("--cloud", cloud.address, *RULE[:2],
                            "--escalation", f"{EDGE}=always:0",
                            "--cloud-budget-per-s", str(budget), "--cloud-max-batch", "8")
    fleet.add_node("edge-1")
    fleet.wait_live(1)
    source, truth = items((holdout[0][:200], holdout[1][:200]), 1)
    started = time.monotonic()
    status = fleet.client.submit(EDGE, source, shard_size=32)
    final = finish(fleet.client, status.job_id)
    elapsed = time.monotonic() - started
    assert final.state == "done"
    stats = tc.InferenceServerClient(cloud.address)
    try:
        seen = stats.get_inference_statistics(CLOUD).model_stats[0].inference_count
    finally:
        stats.close()
    assert seen == 200  # every item went to the cloud, once
    assert seen <= budget * elapsed + budget  # the bucket's burst is one second's worth
    assert elapsed >= (200 - budget) / budget * 0.9  # it really was throttled


def test_online_requests_cascade_and_degrade(fleet, holdout):
    cloud = start_cloud(fleet)
    fleet.start_coordinator("--cloud", cloud.address, *RULE)
    fleet.add_node("edge-1")
    fleet.wait_live(1)
    client = tc.InferenceServerClient(fleet.coordinator.address)
    images = holdout[0][:300]
    try:
        tiers = Counter()
        for i in range(0, 300, 1):
            inp = tc.InferInput("image", [1, 28, 28], "UINT8")
            inp.set_data_from_numpy(images[i:i + 1])
            result = client.infer(EDGE, [inp], outputs=[tc.InferRequestedOutput("label")])
            params = result.get_response().parameters
            tiers[params["tier"].string_param] += 1
            if params["tier"].string_param == "cloud":
                assert params["cloud_label"].int64_param == result.as_numpy("label")[0]
                assert params["edge_confidence"].double_param < 0.9
        assert tiers["cloud"] > 0 and tiers["edge"] > 0
        cloud.kill()
        degraded = 0
        for i in range(300):
            inp = tc.InferInput("image", [1, 28, 28], "UINT8")
            inp.set_data_from_numpy(images[i:i + 1])
            params = client.infer(EDGE, [inp]).get_response().parameters
            degraded += params["degraded"].int64_param
            assert params["tier"].string_param == "edge"
        assert degraded > 0  # the edge answered, flagged degraded
    finally:
        client.close()


def test_a_request_the_cloud_refuses_is_the_callers_error_not_the_clouds(fleet, holdout):
    # The int8 edge model takes its native INT8 tensor; the float cloud model refuses it
    # (INVALID_ARGUMENT). That is the caller's mistake: it goes back to that caller, and
    # the breaker (2 failures open it here) stays closed for everyone else.
    cloud = start_cloud(fleet)
    fleet.start_coordinator("--cloud", cloud.address, "--cascade", f"{EDGE}={CLOUD}",
                            "--escalation", f"{EDGE}=always", "--breaker-failures", "2",
                            "--breaker-reset-s", "60", "--cloud-timeout-s", "2")
    fleet.add_node("edge-1")
    fleet.wait_live(1)
    client = tc.InferenceServerClient(fleet.coordinator.address)
    try:
        native = tc.InferInput("image", [1, 28, 28, 1], "INT8")
        native.set_data_from_numpy(np.zeros((1, 28, 28, 1), np.int8))
        for _ in range(5):
            with pytest.raises(tc.InferenceServerException) as err:
                client.infer(EDGE, [native])
            assert "INVALID_ARGUMENT" in str(err.value.status())
            assert "cloud tier refused" in err.value.message()
        image = tc.InferInput("image", [1, 28, 28], "UINT8")
        image.set_data_from_numpy(holdout[0][:1])
        answer = client.infer(EDGE, [image])
        params = answer.get_response().parameters
        assert params["tier"].string_param == "cloud"
        assert params["degraded"].int64_param == 0
    finally:
        client.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_cloud_is_reported_once_and_in_the_node_list(fleet, holdout):
    port = free_port()  # nothing listens there yet
    fleet.start_coordinator("--cloud", f"127.0.0.1:{port}", *RULE)
    fleet.add_node("edge-1", *PACED)
    fleet.wait_live(1)
    log = fleet.coordinator.log_path
    assert f"cloud tier 127.0.0.1:{port} is unreachable (UNAVAILABLE" in log.read_text()
    source, truth = items(holdout, 1)
    status = fleet.client.submit(EDGE, source, shard_size=32)
    deadline = time.monotonic() + 60
    while fleet.client.get(status.job_id).shards_done < status.shards_total:
        assert time.monotonic() < deadline, fleet.client.get(status.job_id)
        time.sleep(0.1)
    listing = fleet.client.fleet.ListNodes(fleet_pb2.ListNodesRequest(), timeout=5)
    assert listing.cloud.address == f"127.0.0.1:{port}"
    assert listing.cloud.state in ("failing", "breaker_open")
    assert "UNAVAILABLE" in listing.cloud.last_error
    assert listing.cloud.spooled_items == fleet.client.get(status.job_id).pending_escalations > 0
    text = log.read_text()
    # One line for the whole outage (the start-up check's), not one per call.
    assert text.count("is unreachable") + text.count("cloud call for") == 1
    assert "Traceback" not in text
    start_cloud(fleet, port=port)  # the cloud comes up: the spool empties, the job ends
    final = finish(fleet.client, status.job_id)
    assert final.state == "done" and final.pending_escalations == 0
    listing = fleet.client.fleet.ListNodes(fleet_pb2.ListNodesRequest(), timeout=5)
    assert listing.cloud.state == "ok" and listing.cloud.spooled_items == 0
    assert "cloud tier answers again" in log.read_text()


def test_a_coordinator_without_cascade_reports_no_cloud(fleet):
    fleet.start_coordinator()
    listing = fleet.client.fleet.ListNodes(fleet_pb2.ListNodesRequest(), timeout=5)
    assert not listing.HasField("cloud")
