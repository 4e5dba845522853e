"""Seldon MLServer 1.7.1 is a usable Open Inference Protocol cloud tier for our client code.

The server runs in its own venv and process (fixture ``mlserver_cloud``, conftest.py); here
only edgeshard's client side is imported: ``OIPClient`` / ``InferenceStub`` on the stock
``/inference.GRPCInferenceService`` paths and ``protos.codec``.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from grpc_health.v1 import health_pb2

import edgeshard_models
from coordinator.api.clients import OIPClient
from protos import codec, oip_pb2

MODEL = edgeshard_models.CLOUD_MODEL


@pytest.fixture
def client(cloud_up):
    c = OIPClient(cloud_up.grpc_address)
    c.wait_ready(10)
    yield c
    c.close()


def infer_request(images: np.ndarray, outputs=("probabilities",)) -> oip_pb2.ModelInferRequest:
    tensor, raw = codec.encode_input_tensor("image", images)
    return oip_pb2.ModelInferRequest(
        model_name=MODEL, inputs=[tensor], raw_input_contents=[raw],
        outputs=[oip_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs],
    )


def classify(client: OIPClient, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Probabilities [N,10] from the cloud, one ModelInfer per ``batch`` images."""
    parts = []
    for start in range(0, len(images), batch):
        response = client.stub.ModelInfer(infer_request(images[start:start + batch]), timeout=30)
        parts.append(codec.decode_output(response, "probabilities"))
    return np.concatenate(parts)


def local_probabilities(images: np.ndarray) -> np.ndarray:
    """The same model, preprocessing and softmax, run here (the reference for the server)."""
    path = edgeshard_models.repository_path() / MODEL / "1" / "model.tflite"
    interpreter = Interpreter(model_path=str(path))
    x = (images.astype(np.float32) / np.float32(255.0) - np.float32(0.1307)) / np.float32(0.3081)
    x = x[..., np.newaxis]
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_liveness_and_readiness(client):
    assert client.stub.ServerLive(oip_pb2.ServerLiveRequest(), timeout=5).live
    assert client.server_ready()
    assert client.stub.ModelReady(oip_pb2.ModelReadyRequest(name=MODEL), timeout=5).ready
    # MLServer 1.7.1 quirk: ModelReady of an unknown model is UNKNOWN, not NOT_FOUND
    # (its ModelReady lacks the error mapping its ModelInfer has).
    with pytest.raises(grpc.RpcError) as info:
        client.stub.ModelReady(oip_pb2.ModelReadyRequest(name="no_such_model"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert "not found" in info.value.details()


def test_metadata(client):
    server = client.stub.ServerMetadata(oip_pb2.ServerMetadataRequest(), timeout=5)
    assert server.name == "mlserver-cloud"
    meta = client.stub.ModelMetadata(oip_pb2.ModelMetadataRequest(name=MODEL), timeout=5)
    assert meta.name == MODEL
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("image", "UINT8", [-1, 28, 28])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("probabilities", "FP32", [-1, 10])]
    assert client.input_name(MODEL) == "image"


def test_infer_64_holdout_images(client, holdout):
    images, labels = holdout
    request = infer_request(images[:64])
    response = client.stub.ModelInfer(request, timeout=30)
    assert response.model_name == MODEL
    assert response.model_version == "1"
    # A raw request gets raw outputs back (MLServer mirrors the request's encoding).
    assert len(response.raw_output_contents) == len(response.outputs) == 1
    assert [(t.name, t.datatype, list(t.shape)) for t in response.outputs] == [
        ("probabilities", "FP32", [64, 10])]
    probabilities = codec.decode_output(response, "probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (64, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, local_probabilities(images[:64]), atol=1e-5)
    assert (probabilities.argmax(axis=1) == labels[:64]).mean() >= 0.9


def test_nhwc_input_and_typed_contents(client, holdout):
    """[N,28,28,1] is accepted; a typed-contents request gets typed contents back."""
    images = holdout[0][:4, :, :, np.newaxis]
    request = oip_pb2.ModelInferRequest(model_name=MODEL, inputs=[
        oip_pb2.ModelInferRequest.InferInputTensor(
            name="image", datatype="UINT8", shape=list(images.shape),
            contents=oip_pb2.InferTensorContents(uint_contents=images.reshape(-1).tolist()))])
    response = client.stub.ModelInfer(request, timeout=30)
    assert not response.raw_output_contents
    assert len(response.outputs[0].contents.fp32_contents) == 40
    probabilities = codec.decode_output(response, "probabilities")
    np.testing.assert_allclose(probabilities, local_probabilities(images[..., 0]), atol=1e-5)


def test_holdout_accuracy_matches_model_card(client, holdout):
    images, labels = holdout
    probabilities = classify(client, images[:500])
    correct = int((probabilities.argmax(axis=1) == labels[:500]).sum())
    card = edgeshard_models.model_card()[MODEL]["holdout_accuracy"]
    print(f"\nMLServer cloud tier: {correct}/500 = {correct / 500:.3f} on the first 500 hold-out"
          f" items (model card: {card} on all 1000)")
    assert correct / 500 >= 0.96
    assert abs(correct / 500 - card) <= 0.02


def test_unknown_output_is_invalid_argument(client, holdout):
    """The cloud serves ``probabilities`` only: asking for the edge's outputs is refused."""
    with pytest.raises(grpc.RpcError) as info:
        client.stub.ModelInfer(infer_request(holdout[0][:2], ("label", "confidence")), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "label" in info.value.details()


def test_rpcs_mlserver_lacks(client):
    """No ModelConfig, ModelStatistics or grpc.health.v1: a coordinator must not need them
    for the cloud tier (readiness comes from ServerReady / ModelReady)."""
    calls = [
        lambda: client.stub.ModelConfig(oip_pb2.ModelConfigRequest(name=MODEL), timeout=5),
        lambda: client.stub.ModelStatistics(oip_pb2.ModelStatisticsRequest(), timeout=5),
        lambda: client.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("graceful", [True, False], ids=["sigterm", "sigkill"])
def test_stop_then_start_on_the_same_ports(mlserver_cloud, holdout, graceful):
    """An outage: the cloud goes down (drained or crashed) and comes back at its address."""
    if not mlserver_cloud.running:
        mlserver_cloud.start()
    address = mlserver_cloud.grpc_address
    client = OIPClient(address)
    try:
        images = holdout[0][:8]
        before = classify(client, images)

        mlserver_cloud.stop(graceful=graceful)
        assert not mlserver_cloud.running
        with pytest.raises(grpc.RpcError) as info:
            client.server_ready(timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        began = time.monotonic()
        mlserver_cloud.start()
        print(f"\nMLServer back after {time.monotonic() - began:.1f} s"
              f" (model ready after {mlserver_cloud.startup_s:.1f} s)")
        assert mlserver_cloud.grpc_address == address
        # The same channel reconnects, though only at its next reconnect attempt: after
        # failures gRPC backs off (1 s, x1.6 per failure, up to 120 s by default).
        began = time.monotonic()
        client.wait_ready(30)
        print(f"channel reconnected {time.monotonic() - began:.1f} s after the model was ready")
        assert client.server_ready(timeout=5)
        np.testing.assert_array_equal(classify(client, images), before)
    finally:
        client.close()
