"""The coordinator as one Open Inference Protocol server for the fleet (tritonclient, real
processes): same answers as a node, routing keys stick, retries, saturation, admin CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

import edgeshard_models

EDGE = edgeshard_models.EDGE_MODEL
pytestmark = pytest.mark.timeout(120)


def infer(client, images, model=EDGE, **kwargs):
    inp = tc.InferInput("image", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images)
    return client.infer(model, [inp], **kwargs)


@pytest.fixture
def two_node_fleet(fleet):
    fleet.start_coordinator()
    fleet.add_node("n0")
    fleet.add_node("n1")
    fleet.wait_live(2)
    return fleet


def test_tritonclient_against_coordinator_matches_node(two_node_fleet, holdout):
    fleet = two_node_fleet
    images = holdout[0][:200]
    via_coord = tc.InferenceServerClient(fleet.coordinator.address)
    direct = tc.InferenceServerClient(fleet.nodes[0].address)
    try:
        assert via_coord.is_server_live() and via_coord.is_server_ready()
        assert via_coord.is_model_ready(EDGE)
        assert via_coord.get_model_metadata(EDGE).name == EDGE
        assert via_coord.get_model_config(EDGE).config.max_batch_size == 64
        for start in range(0, 200, 50):
            chunk = images[start:start + 50]
            a = infer(via_coord, chunk)
            b = infer(direct, chunk)
            np.testing.assert_array_equal(a.as_numpy("label"), b.as_numpy("label"))
            params = a.get_response().parameters
            assert params["tier"].string_param == "edge"
            assert params["node"].string_param in ("n0", "n1")
        stats = via_coord.get_inference_statistics(EDGE)
        assert sum(s.inference_count for s in stats.model_stats) >= 200
    finally:
        via_coord.close()
        direct.close()


def test_requests_spread_and_routing_keys_stick(two_node_fleet, holdout):
    client = tc.InferenceServerClient(two_node_fleet.coordinator.address)
    image = holdout[0][:1]
    try:
        spread = Counter(infer(client, image).get_response().parameters["node"].string_param
                         for _ in range(60))
        assert set(spread) == {"n0", "n1"}, spread
        for key in ("camera-1", "camera-2", "camera-3", "camera-4"):
            nodes = {infer(client, image, parameters={"routing_key": key})
                     .get_response().parameters["node"].string_param for _ in range(10)}
            assert len(nodes) == 1, f"{key} moved between {nodes}"
    finally:
        client.close()


def test_invalid_argument_is_passed_through_not_retried(two_node_fleet):
    client = tc.InferenceServerClient(two_node_fleet.coordinator.address)
    try:
        inp = tc.InferInput("image", [1, 28, 28, 3], "UINT8")
        inp.set_data_from_numpy(np.zeros((1, 28, 28, 3), np.uint8))
        with pytest.raises(Exception) as err:
            client.infer(EDGE, [inp])
        assert "inputs[0].shape" in str(err.value)
        with pytest.raises(Exception) as err:
            client.infer("no-such-model", [inp])
        assert "no node serves" in str(err.value)
    finally:
        client.close()
    stats = tc.InferenceServerClient(two_node_fleet.nodes[0].address)
    try:  # neither node counted a retry of the bad request as a success
        assert stats.is_server_live()
    finally:
        stats.close()


def test_untrusted_sizes_and_repeated_outputs_are_refused_at_the_front(two_node_fleet):
    from protos import oip_pb2, parameters
    from protos.oip_service import InferenceStub

    channel = grpc.insecure_channel(two_node_fleet.coordinator.address)
    stub = InferenceStub(channel)
    try:
        huge = oip_pb2.ModelInferRequest(model_name=EDGE, raw_input_contents=[b""])
        huge.inputs.add(name="image", datatype="UINT8", shape=[0, 2**40, 2**40])
        twice = oip_pb2.ModelInferRequest(model_name=EDGE,
                                          raw_input_contents=[bytes(28 * 28)])
        twice.inputs.add(name="image", datatype="UINT8", shape=[1, 28, 28])
        twice.outputs.add(name="label")
        twice.outputs.add(name="label")
        for request, field in ((huge, "inputs[0].shape"), (twice, "outputs[1].name")):
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            assert field in err.value.details()
        del twice.outputs[1:]
        answer = stub.ModelInfer(twice, timeout=10)  # still serving
        assert [o.name for o in answer.outputs] == ["label"]
        for value in ("camera 7", "x" * 65, 7):
            bad = oip_pb2.ModelInferRequest()
            bad.CopyFrom(twice)
            parameters.set_param(bad.parameters, "segment", value)
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(bad, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            assert "parameters.segment" in err.value.details()
        parameters.set_param(twice.parameters, "segment", "camera-07")
        assert stub.ModelInfer(twice, timeout=10).outputs[0].name == "label"
    finally:
        channel.close()


def test_dead_node_is_retried_elsewhere(two_node_fleet, holdout):
    fleet = two_node_fleet
    fleet.nodes[0].kill()
    client = tc.InferenceServerClient(fleet.coordinator.address)
    try:  # before the coordinator notices, requests to n0 fail over to n1
        nodes = {infer(client, holdout[0][:2]).get_response().parameters["node"].string_param
                 for _ in range(20)}
        assert nodes == {"n1"}
    finally:
        client.close()


def test_saturated_fleet_answers_resource_exhausted(fleet, holdout):
    fleet.start_coordinator("--max-in-flight", "1")
    fleet.add_node("slow", "--max-batch-delay-ms", "1500", "--max-queue-size", "64")
    fleet.wait_live(1)
    from protos import oip_pb2
    from protos.oip_service import InferenceStub

    channel = grpc.insecure_channel(fleet.coordinator.address)
    stub = InferenceStub(channel)
    req = oip_pb2.ModelInferRequest(
        model_name=EDGE,
        inputs=[oip_pb2.ModelInferRequest.InferInputTensor(
            name="image", datatype="UINT8", shape=[1, 28, 28])],
        raw_input_contents=[np.zeros((1, 28, 28), np.uint8).tobytes()])
    try:
        first = stub.ModelInfer.future(req, timeout=20)  # held ~1.5 s by the node's batcher
        time.sleep(0.3)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(req, timeout=20)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - t0 < 1.0  # refused at once, not queued
        assert len(first.result().outputs) == 3
    finally:
        channel.close()


def one_slot_front(fleet, hold_ms: int):
    """A coordinator over one node with one slot that holds each request ``hold_ms``;
    its channel (to close), an inference stub and a one-image request."""
    from protos import oip_pb2
    from protos.oip_service import InferenceStub

    fleet.start_coordinator()
    fleet.add_node("slow", "--capacity", "1", "--max-batch-delay-ms", str(hold_ms))
    fleet.wait_live(1)
    channel = grpc.insecure_channel(fleet.coordinator.address)
    req = oip_pb2.ModelInferRequest(model_name=EDGE, raw_input_contents=[bytes(28 * 28)])
    req.inputs.add(name="image", datatype="UINT8", shape=[1, 28, 28])
    return channel, InferenceStub(channel), req


def test_control_calls_answer_and_inference_waits_while_the_fleet_is_at_capacity(fleet):
    from protos import oip_pb2

    channel, stub, req = one_slot_front(fleet, 1500)
    try:
        held = stub.ModelInfer.future(req, timeout=20)  # the node's one slot, ~1.5 s
        time.sleep(0.3)
        queued = stub.ModelInfer.future(req, timeout=20)  # waits for the slot, not refused
        meta = stub.ModelMetadata(oip_pb2.ModelMetadataRequest(name=EDGE), timeout=5)
        assert meta.name == EDGE and meta.inputs
        config = stub.ModelConfig(oip_pb2.ModelConfigRequest(name=EDGE), timeout=5)
        assert config.config.max_batch_size > 0
        assert stub.ModelStatistics(oip_pb2.ModelStatisticsRequest(name=EDGE), timeout=5)
        assert stub.ModelReady(oip_pb2.ModelReadyRequest(name=EDGE), timeout=5).ready
        assert stub.ServerReady(oip_pb2.ServerReadyRequest(), timeout=5).ready
        assert not held.done()  # all of that while the slot was still taken
        assert len(held.result().outputs) == 3
        assert len(queued.result().outputs) == 3
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelMetadata(oip_pb2.ModelMetadataRequest(name="nope"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert EDGE in err.value.details()  # names what is served
    finally:
        channel.close()


def test_a_request_that_cannot_get_a_slot_within_its_deadline_is_refused(fleet):
    channel, stub, req = one_slot_front(fleet, 3000)
    try:
        held = stub.ModelInfer.future(req, timeout=20)
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(req, timeout=1.0)
        assert err.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    grpc.StatusCode.DEADLINE_EXCEEDED), err.value.details()
        assert len(held.result().outputs) == 3
    finally:
        channel.close()


def test_sixteen_clients_on_two_nodes_are_queued_not_refused(two_node_fleet, holdout):
    from concurrent.futures import ThreadPoolExecutor

    images = holdout[0]

    def client_loop(worker: int) -> Counter:
        seen = Counter()
        client = tc.InferenceServerClient(two_node_fleet.coordinator.address)
        try:
            for i in range(25):
                try:
                    infer(client, images[(worker * 25 + i) % len(images)][None])
                    seen["ok"] += 1
                except tc.InferenceServerException as exc:
                    seen[str(exc.status())] += 1
        finally:
            client.close()
        return seen

    with ThreadPoolExecutor(16) as pool:
        totals = sum(pool.map(client_loop, range(16)), Counter())
    assert totals == Counter(ok=16 * 25), totals


def test_admin_cli_nodes_drain_undrain(two_node_fleet):
    address = two_node_fleet.coordinator.address

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "coordinator", *args,
                               "--coordinator", address],
                              capture_output=True, text=True, timeout=60)

    out = cli("nodes", "--json")
    assert out.returncode == 0, out.stderr
    nodes = {n["node_id"]: n for n in json.loads(out.stdout)}
    assert set(nodes) == {"n0", "n1"} and all(n["state"] == "live" for n in nodes.values())
    assert nodes["n0"]["models"][EDGE] == ["1"]
    assert "draining" in cli("drain", "n0").stdout
    assert "live" in cli("undrain", "n0").stdout
    missing = cli("drain", "nope")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_seed_nodes_and_node_restart(fleet, holdout):
    """Static --node seeds are admitted after a health check; a killed node is marked dead."""
    seed = fleet.add_node("seeded", register=False)
    fleet.start_coordinator("--node", seed.address, "--node", "127.0.0.1:1")
    live = fleet.wait_live(1)
    assert [n.address for n in live] == [seed.address]
    states = {n.address: n.state for n in fleet.client.nodes()}
    assert states["127.0.0.1:1"] == "candidate"  # never answered a health check
    seed.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if {n.address: n.state for n in fleet.client.nodes()}[seed.address] == "dead":
            break
        time.sleep(0.2)
    else:
        raise AssertionError("killed seed never marked dead")


def test_slow_node_is_down_weighted(fleet, holdout):
    fleet.start_coordinator()
    fleet.add_node("fast")
    fleet.add_node("slow", "--max-batch-delay-ms", "100")  # every request waits 100 ms
    fleet.wait_live(2)
    client = tc.InferenceServerClient(fleet.coordinator.address)
    try:
        # Traffic until the coordinator has both nodes' latencies and a membership round
        # has recomputed the weights (no fixed sleep: a loaded machine makes rounds late).
        deadline = time.monotonic() + 30
        while (weights := {n.node_id: n.weight for n in fleet.client.nodes()})["slow"] >= 0.5:
            assert time.monotonic() < deadline, weights
            for _ in range(10):
                infer(client, holdout[0][:1])
            time.sleep(0.1)
        later = Counter(infer(client, holdout[0][:1]).get_response()
                        .parameters["node"].string_param for _ in range(100))
    finally:
        client.close()
    assert weights["fast"] == 1.0, weights
    assert later["slow"] <= 10, later


def test_model_stream_infer_through_the_coordinator(two_node_fleet, holdout):
    """Triton's streaming API against the fleet: every request answered once by id, spread
    over the nodes, a bad request answered with its error while the stream goes on."""
    import queue

    images, _ = holdout
    answers: queue.Queue = queue.Queue()
    client = tc.InferenceServerClient(two_node_fleet.coordinator.address)
    direct = tc.InferenceServerClient(two_node_fleet.nodes[0].address)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        want = {}
        for i in range(60):
            inp = tc.InferInput("image", [1, 28, 28], "UINT8")
            inp.set_data_from_numpy(images[i:i + 1])
            want[str(i)] = int(direct.infer(EDGE, [inp]).as_numpy("label")[0])
            client.async_stream_infer(EDGE, [inp], request_id=str(i))
        bad = tc.InferInput("image", [1, 28, 28, 3], "UINT8")
        bad.set_data_from_numpy(np.zeros((1, 28, 28, 3), np.uint8))
        client.async_stream_infer(EDGE, [bad], request_id="bad")
        got, nodes, errors = {}, Counter(), []
        for _ in range(61):
            result, error = answers.get(timeout=30)
            if error is not None:
                errors.append(str(error))
                continue
            response = result.get_response()
            got[response.id] = int(result.as_numpy("label")[0])
            nodes[response.parameters["node"].string_param] += 1
        client.stop_stream()
    finally:
        client.close()
        direct.close()
    assert got == want
    assert set(nodes) == {"n0", "n1"}, nodes
    assert len(errors) == 1 and "INVALID_ARGUMENT" in errors[0] and "inputs[0].shape" in errors[0]


def test_open_streams_are_capped(two_node_fleet, holdout):
    import threading

    from coordinator.api.inference_servicer import MAX_INFER_STREAMS
    from protos import oip_pb2
    from protos.oip_service import InferenceStub

    images, _ = holdout
    gate = threading.Event()

    def request(rid):
        r = oip_pb2.ModelInferRequest(model_name=EDGE, id=rid,
                                      raw_input_contents=[images[0].tobytes()])
        r.inputs.add(name="image", datatype="UINT8", shape=[1, 28, 28])
        return r

    def held(k):
        yield request(f"held-{k}")
        gate.wait(30)

    channel = grpc.insecure_channel(two_node_fleet.coordinator.address)
    stub = InferenceStub(channel)
    try:
        open_streams = [stub.ModelStreamInfer(held(k), timeout=60)
                        for k in range(MAX_INFER_STREAMS)]
        for k, s in enumerate(open_streams):  # each answered: all are open at the server
            assert next(s).infer_response.id == f"held-{k}"
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ModelStreamInfer(iter([request("one-too-many")]), timeout=10))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ModelStreamInfer streams are open" in err.value.details()
        gate.set()
        for s in open_streams:
            assert list(s) == []
        answer = list(stub.ModelStreamInfer(iter([request("after")]), timeout=10))
        assert [a.infer_response.id for a in answer] == ["after"]
    finally:
        gate.set()
        channel.close()
