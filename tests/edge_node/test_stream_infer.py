"""Triton's ModelStreamInfer on a real edge-node, through tritonclient's streaming API and a
raw gRPC stream: every request answered once, errors per request without ending the
stream, concurrent requests, a cap on open streams, and drain."""

from __future__ import annotations

import queue
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

import edgeshard_models
from protos import codec, oip_pb2
from protos.oip_service import InferenceStub

EDGE = edgeshard_models.EDGE_MODEL
pytestmark = pytest.mark.timeout(120)


def image_request(images: np.ndarray, request_id: str, model: str = EDGE):
    request = oip_pb2.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="image", datatype="UINT8", shape=list(images.shape))
    request.raw_input_contents.append(np.ascontiguousarray(images).tobytes())
    return request


def stream_all(address: str, requests: list, timeout: float = 30) -> list:
    channel = grpc.insecure_channel(address)
    try:
        return list(InferenceStub(channel).ModelStreamInfer(iter(requests), timeout=timeout))
    finally:
        channel.close()


def test_tritonclient_stream_answers_every_request_by_id(node, holdout):
    images, _ = holdout
    want = {}
    direct = tc.InferenceServerClient(node.address)
    answers: queue.Queue = queue.Queue()
    client = tc.InferenceServerClient(node.address)
    try:
        for i in range(40):
            inp = tc.InferInput("image", [1, 28, 28], "UINT8")
            inp.set_data_from_numpy(images[i:i + 1])
            want[str(i)] = int(direct.infer(EDGE, [inp]).as_numpy("label")[0])
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(40):
            inp = tc.InferInput("image", [1, 28, 28], "UINT8")
            inp.set_data_from_numpy(images[i:i + 1])
            client.async_stream_infer(EDGE, [inp], request_id=str(i))
        got = {}
        for _ in range(40):
            result, error = answers.get(timeout=30)
            assert error is None, error
            got[result.get_response().id] = int(result.as_numpy("label")[0])
        client.stop_stream()
    finally:
        client.close()
        direct.close()
    assert got == want


def test_a_bad_request_gets_an_error_and_the_stream_goes_on(node, holdout):
    images, _ = holdout
    bad_shape = image_request(np.zeros((1, 5, 5, 3), np.uint8), "bad-shape")
    unknown = image_request(images[:1], "no-model", model="no-such-model")
    good = [image_request(images[i:i + 1], f"ok-{i}") for i in range(3)]
    answers = stream_all(node.address, [good[0], bad_shape, good[1], unknown, good[2]])
    by_id = {a.infer_response.id: a for a in answers}
    assert sorted(by_id) == ["bad-shape", "no-model", "ok-0", "ok-1", "ok-2"]
    assert by_id["bad-shape"].error_message.startswith("INVALID_ARGUMENT: ")
    assert "inputs[0].shape" in by_id["bad-shape"].error_message
    assert by_id["no-model"].error_message.startswith("NOT_FOUND: ")
    assert by_id["no-model"].error_message.endswith("(request id 'no-model')")
    assert by_id["no-model"].infer_response.model_name == "no-such-model"
    for i in range(3):
        ok = by_id[f"ok-{i}"]
        assert ok.error_message == ""
        assert codec.decode_output(ok.infer_response, "label").shape == (1,)


def test_requests_of_one_stream_run_concurrently_and_all_are_answered(node, holdout):
    images, _ = holdout
    requests = [image_request(images[i % 100:i % 100 + 4], f"r{i}") for i in range(200)]
    answers = stream_all(node.address, requests, timeout=60)
    assert sorted(a.infer_response.id for a in answers) == sorted(f"r{i}" for i in range(200))
    assert all(a.error_message == "" for a in answers)


def test_more_streams_than_allowed_are_refused_and_zero_turns_streaming_off(
        start, shipped_repository, holdout):
    images, _ = holdout
    proc = start(shipped_repository, "--max-infer-streams", "1", "--workers", "1")
    channel = grpc.insecure_channel(proc.address)
    stub = InferenceStub(channel)
    gate = threading.Event()

    def held():  # one request, then keep the stream open until the gate opens
        yield image_request(images[:1], "held")
        gate.wait(20)

    try:
        first = stub.ModelStreamInfer(held(), timeout=30)
        assert next(first).infer_response.id == "held"
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ModelStreamInfer(iter([image_request(images[:1], "second")]), timeout=10))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-infer-streams" in err.value.details()
        gate.set()
        assert list(first) == []
        # the slot is free again once the first stream ended
        again = list(stub.ModelStreamInfer(iter([image_request(images[:1], "third")]),
                                           timeout=10))
        assert [a.infer_response.id for a in again] == ["third"]
    finally:
        gate.set()
        channel.close()
    off = start(shipped_repository, "--max-infer-streams", "0", "--workers", "1", name="off")
    with pytest.raises(grpc.RpcError) as err:
        stream_all(off.address, [image_request(images[:1], "x")])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "off on this node (--max-infer-streams 0)" in err.value.details()



def test_drain_answers_what_is_in_flight_refuses_the_rest_and_exits(
        start, shipped_repository, holdout):
    images, _ = holdout
    proc = start(shipped_repository, "--workers", "1", "--grace-seconds", "2")
    channel = grpc.insecure_channel(proc.address)
    draining = threading.Event()
    sent_late = threading.Event()

    def requests():
        yield image_request(images[:1], "before")
        draining.wait(20)
        yield image_request(images[:1], "during")
        sent_late.set()

    try:
        answers = InferenceStub(channel).ModelStreamInfer(requests(), timeout=30)
        first = next(answers)
        assert (first.infer_response.id, first.error_message) == ("before", "")
        stopper = threading.Thread(target=lambda: proc.process.send_signal(15))
        stopper.start()
        deadline = 0
        while b"draining" not in proc.log_path.read_bytes() and deadline < 200:
            threading.Event().wait(0.05)
            deadline += 1
        draining.set()
        rest = list(answers)  # the client closed its side after "during": the stream ends
        assert [a.infer_response.id for a in rest] == ["during"]
        assert rest[0].error_message.startswith("UNAVAILABLE: ")
        stopper.join()
        assert proc.process.wait(15) == 0
    finally:
        draining.set()
        channel.close()
