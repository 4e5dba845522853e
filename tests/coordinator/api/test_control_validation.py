"""The coordinator's control plane refuses malformed requests with a status naming the field."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos import codec, fleet_pb2, fleet_pb2_grpc

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def stubs(fleet):
    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.wait_live(1)
    channel = grpc.insecure_channel(fleet.coordinator.address)
    yield fleet_pb2_grpc.FleetStub(channel), fleet_pb2_grpc.JobsStub(channel)
    channel.close()


def header(**kw):
    return fleet_pb2.SubmitRequest(header=fleet_pb2.JobHeader(model="mnist_edge", **kw))


def items(array, ids=()):
    datatype, shape, raw = codec.encode_array(array)
    return fleet_pb2.SubmitRequest(items=fleet_pb2.ItemBatch(ids=list(ids), datatype=datatype,
                                                             shape=shape, data=raw))


IMAGES = np.zeros((4, 28, 28), np.uint8)
BAD_SUBMITS = [
    ("no header", [items(IMAGES)], grpc.StatusCode.INVALID_ARGUMENT, "header"),
    ("two headers", [header(), header(), items(IMAGES)], grpc.StatusCode.INVALID_ARGUMENT,
     "second header"),
    ("no items", [header()], grpc.StatusCode.INVALID_ARGUMENT, "no items"),
    ("empty message", [header(), fleet_pb2.SubmitRequest()], grpc.StatusCode.INVALID_ARGUMENT,
     "empty"),
    ("unknown model", [fleet_pb2.SubmitRequest(header=fleet_pb2.JobHeader(model="nope")),
                       items(IMAGES)], grpc.StatusCode.NOT_FOUND, "nope"),
    ("short data", [header(), fleet_pb2.SubmitRequest(items=fleet_pb2.ItemBatch(
        datatype="UINT8", shape=[4, 28, 28], data=b"\0" * 10))],
     grpc.StatusCode.INVALID_ARGUMENT, "items[1].data"),
    ("bad datatype", [header(), fleet_pb2.SubmitRequest(items=fleet_pb2.ItemBatch(
        datatype="WORDS", shape=[1], data=b"x"))], grpc.StatusCode.INVALID_ARGUMENT,
     "datatype"),
    ("ids count", [header(), items(IMAGES, ids=["a", "b"])], grpc.StatusCode.INVALID_ARGUMENT,
     "ids"),
    ("duplicate ids", [header(), items(IMAGES, ids=["a", "a", "b", "c"])],
     grpc.StatusCode.INVALID_ARGUMENT, "a"),
    ("mixed shapes", [header(), items(IMAGES), items(np.zeros((2, 14, 14), np.uint8))],
     grpc.StatusCode.INVALID_ARGUMENT, "item shape"),
    ("total mismatch", [header(total_items=10), items(IMAGES)],
     grpc.StatusCode.INVALID_ARGUMENT, "total_items"),
    ("huge declared shape", [header(), fleet_pb2.SubmitRequest(items=fleet_pb2.ItemBatch(
        datatype="UINT8", shape=[0, 2**40, 2**40], data=b""))],
     grpc.StatusCode.INVALID_ARGUMENT, "items[1].shape"),
    ("huge BYTES shape", [header(), fleet_pb2.SubmitRequest(items=fleet_pb2.ItemBatch(
        datatype="BYTES", shape=[2**40], data=b""))],
     grpc.StatusCode.INVALID_ARGUMENT, "items[1].shape"),
    ("RGB items for a grayscale model", [header(), items(np.zeros((2, 427, 640, 3), np.uint8))],
     grpc.StatusCode.INVALID_ARGUMENT, "refuses item '0'"),
    ("float32 items at the wrong size", [header(), items(np.zeros((2, 30, 30, 1), np.float32))],
     grpc.StatusCode.INVALID_ARGUMENT, "refuses item '0'"),
    ("unknown model version", [header(model_version="99"), items(IMAGES)],
     grpc.StatusCode.NOT_FOUND, "model_version"),
    ("no model", [fleet_pb2.SubmitRequest(header=fleet_pb2.JobHeader()), items(IMAGES)],
     grpc.StatusCode.INVALID_ARGUMENT, "model: required"),
    ("bad job id", [header(job_id="has spaces"), items(IMAGES)],
     grpc.StatusCode.INVALID_ARGUMENT, "job_id"),
    ("item id too long", [header(), items(IMAGES, ids=["a", "b", "c", "x" * 257])],
     grpc.StatusCode.INVALID_ARGUMENT, "items[1].ids[3]: an item id is 1..256 characters"),
    ("too many params", [header(params={f"k{i}": "v" for i in range(65)}), items(IMAGES)],
     grpc.StatusCode.INVALID_ARGUMENT, "params: at most 64 entries"),
    ("param value too long", [header(params={"k": "v" * 5000}), items(IMAGES)],
     grpc.StatusCode.INVALID_ARGUMENT, "values at most 4096"),
]


@pytest.mark.parametrize("case,messages,code,text", BAD_SUBMITS, ids=[c[0] for c in BAD_SUBMITS])
def test_bad_submit_is_refused(stubs, case, messages, code, text):
    _, jobs = stubs
    with pytest.raises(grpc.RpcError) as err:
        jobs.Submit(iter(messages), timeout=20)
    assert err.value.code() == code, err.value.details()
    assert text in err.value.details()
    ok = jobs.Submit(iter([header(), items(IMAGES)]), timeout=20)  # still serving
    assert ok.total_items == 4


def test_unknown_job_and_node(stubs):
    fleet, jobs = stubs
    for call in (jobs.GetJob, jobs.Cancel):
        with pytest.raises(grpc.RpcError) as err:
            call(fleet_pb2.JobRef(job_id="missing"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        list(jobs.FetchResults(fleet_pb2.FetchResultsRequest(job_id="missing"), timeout=10))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        fleet.Drain(fleet_pb2.DrainRequest(node_id="ghost"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "ghost" in err.value.details()


def test_register_needs_id_and_address_and_unknown_beats_reregister(stubs):
    fleet, _ = stubs
    with pytest.raises(grpc.RpcError) as err:
        fleet.Register(fleet_pb2.RegisterRequest(node_id="x"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "address" in err.value.details()
    beat = fleet.Heartbeat(fleet_pb2.HeartbeatRequest(node_id="x", epoch=7), timeout=10)
    assert beat.reregister


def versions(name: str, *v: str) -> fleet_pb2.ModelVersions:
    return fleet_pb2.ModelVersions(name=name, versions=list(v))


BAD_REPORTS = [
    ("too many models", {"models": [versions(f"m{i}", "1") for i in range(257)]},
     "models: at most 256 per node"),
    ("long model name", {"models": [versions("m" * 129, "1")]}, "a model name is 1..128"),
    ("too many versions", {"models": [versions("m", *map(str, range(65)))]},
     "models['m'].versions: at most 64"),
    ("huge capacity", {"capacity": 2_000_000}, "capacity: at most 1000000"),
    ("too many processes", {"processes": 257}, "processes: at most 256, got 257"),
    ("long node id", {"node_id": "n" * 129}, "node_id: required, 1..128"),
]


@pytest.mark.parametrize("case,fields,text", BAD_REPORTS, ids=[c[0] for c in BAD_REPORTS])
def test_a_registration_out_of_bounds_is_refused_naming_the_field(stubs, case, fields, text):
    fleet, _ = stubs
    request = {"node_id": "x", "address": "127.0.0.1:9", **fields}
    with pytest.raises(grpc.RpcError) as err:
        fleet.Register(fleet_pb2.RegisterRequest(**request), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert text in err.value.details()


def test_a_heartbeat_out_of_bounds_or_a_drain_of_nothing_is_refused(stubs):
    fleet, _ = stubs
    for load, text in ((fleet_pb2.NodeLoad(ewma_latency_ms=float("nan")), "ewma_latency_ms"),
                       (fleet_pb2.NodeLoad(ewma_latency_ms=-1), "ewma_latency_ms"),
                       (fleet_pb2.NodeLoad(capacity=2_000_000), "capacity")):
        with pytest.raises(grpc.RpcError) as err:
            fleet.Heartbeat(fleet_pb2.HeartbeatRequest(node_id="x", epoch=1, load=load),
                            timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert text in err.value.details()
    for node in ("", "n" * 300):
        with pytest.raises(grpc.RpcError) as err:
            fleet.Drain(fleet_pb2.DrainRequest(node_id=node), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "node_id: required" in err.value.details()


def test_jobs_are_listed_page_by_page_and_bad_pages_are_named(stubs, fleet):
    _, jobs = stubs
    made = [jobs.Submit(iter([header(), items(IMAGES)]), timeout=20).job_id for _ in range(3)]
    page = jobs.ListJobs(fleet_pb2.ListJobsRequest(page_size=2), timeout=10)
    assert [j.job_id for j in page.jobs] == made[:2] and page.next_page_token == made[1]
    last = jobs.ListJobs(fleet_pb2.ListJobsRequest(page_size=2, page_token=made[1]),
                         timeout=10)
    assert [j.job_id for j in last.jobs] == made[2:] and last.next_page_token == ""
    assert [j.job_id for j in fleet.client.list_jobs(page_size=1)] == made  # pages through
    for request, text in ((fleet_pb2.ListJobsRequest(page_size=5000), "page_size: at most"),
                          (fleet_pb2.ListJobsRequest(page_token="x"), "page_token")):
        with pytest.raises(grpc.RpcError) as err:
            jobs.ListJobs(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert text in err.value.details()


def test_reflection_lists_the_control_services(stubs, fleet):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    channel = grpc.insecure_channel(fleet.coordinator.address)
    try:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    finally:
        channel.close()
    assert {"edgeshard.v1.Fleet", "edgeshard.v1.Jobs", "inference.GRPCInferenceService",
            "grpc.health.v1.Health"} <= set(services)


def test_an_empty_job_id_is_named(stubs):
    _, jobs = stubs
    for call in (jobs.GetJob, jobs.Cancel):
        with pytest.raises(grpc.RpcError) as err:
            call(fleet_pb2.JobRef(job_id=""), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "job_id: required" in err.value.details()


def test_an_unknown_version_at_the_front_names_the_field(stubs, fleet):
    from protos import oip_pb2
    from protos.oip_service import InferenceStub

    channel = grpc.insecure_channel(fleet.coordinator.address)
    try:
        request = oip_pb2.ModelInferRequest(model_name="mnist_edge", model_version="99",
                                            raw_input_contents=[bytes(28 * 28)])
        request.inputs.add(name="image", datatype="UINT8", shape=[1, 28, 28])
        with pytest.raises(grpc.RpcError) as err:
            InferenceStub(channel).ModelInfer(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details().startswith("model_version: no node serves mnist_edge "
                                              "version 99 (its versions: 1)")
    finally:
        channel.close()
