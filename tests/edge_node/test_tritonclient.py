"""A real edge-node process, driven by the stock Triton client (tritonclient.grpc)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tc

import edgeshard_models


@pytest.fixture
def client(node):
    c = tc.InferenceServerClient(node.address)
    yield c
    c.close()


def classify(client, model, images, batch=64):
    labels = []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        inp = tc.InferInput("image", list(chunk.shape), "UINT8")
        inp.set_data_from_numpy(chunk)
        result = client.infer(model, [inp], outputs=[tc.InferRequestedOutput("label")])
        labels.append(result.as_numpy("label"))
    return np.concatenate(labels)


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "edgeshard-edge-node"
    assert "model_configuration" in meta.extensions


def test_model_metadata_and_config(client):
    meta = client.get_model_metadata(edgeshard_models.EDGE_MODEL)
    assert meta.name == edgeshard_models.EDGE_MODEL
    assert list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("image", "UINT8", [-1, 28, 28, 1])
    ]
    assert {t.name: t.datatype for t in meta.outputs} == {
        "probabilities": "FP32", "label": "INT64", "confidence": "FP32"
    }
    config = client.get_model_config(edgeshard_models.EDGE_MODEL).config
    assert config.max_batch_size == 64
    assert list(config.input[0].dims) == [28, 28, 1]
    assert [o.name for o in config.output] == ["probabilities", "label", "confidence"]
    assert client.is_model_ready(edgeshard_models.EDGE_MODEL)
    assert client.is_model_ready(edgeshard_models.EDGE_MODEL, "1")
    assert not client.is_model_ready(edgeshard_models.EDGE_MODEL, "7")


@pytest.mark.parametrize("model,key", [
    (edgeshard_models.EDGE_MODEL, "holdout_accuracy_int8"),
    (edgeshard_models.CLOUD_MODEL, "holdout_accuracy"),
])
def test_holdout_accuracy_equals_model_card(client, holdout, model, key):
    images, labels = holdout
    predicted = classify(client, model, images)
    accuracy = float((predicted == labels).mean())
    assert accuracy == pytest.approx(edgeshard_models.model_card()[model][key], abs=1e-12)


def test_card_thresholds_and_cloud_beats_edge():
    card = edgeshard_models.model_card()
    edge = card[edgeshard_models.EDGE_MODEL]["holdout_accuracy_int8"]
    cloud = card[edgeshard_models.CLOUD_MODEL]["holdout_accuracy"]
    assert edge >= 0.93
    assert cloud >= 0.97
    assert cloud > edge


def test_outputs_and_response_parameters(client, holdout):
    images = holdout[0][:5]
    inp = tc.InferInput("image", [5, 28, 28], "UINT8")
    inp.set_data_from_numpy(images)
    result = client.infer(edgeshard_models.EDGE_MODEL, [inp], request_id="req-7")
    probs = result.as_numpy("probabilities")
    assert probs.shape == (5, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("label"), probs.argmax(axis=1))
    np.testing.assert_allclose(result.as_numpy("confidence"), probs.max(axis=1), rtol=1e-6)
    response = result.get_response()
    assert response.id == "req-7"
    assert response.model_version == "1"
    assert response.parameters["model_version"].string_param == "1"
    assert response.parameters["node"].string_param == "test-node"


def test_any_image_size_and_typed_contents(client, holdout):
    """UINT8 images of another size are resized; FP32 normalized input is accepted too."""
    images = holdout[0][:8]
    big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # 56x56, same digits
    inp = tc.InferInput("image", list(big.shape) + [1], "UINT8")
    inp.set_data_from_numpy(big[..., None])
    big_labels = client.infer(edgeshard_models.EDGE_MODEL, [inp]).as_numpy("label")
    small = classify(client, edgeshard_models.EDGE_MODEL, images)
    assert (big_labels == small).mean() >= 0.75  # same digits, resampled twice

    normalized = ((images.astype(np.float32) / np.float32(255.0) - np.float32(0.1307))
                  / np.float32(0.3081))[..., None]
    fp = tc.InferInput("image", list(normalized.shape), "FP32")
    fp.set_data_from_numpy(normalized)
    fp_labels = client.infer(edgeshard_models.EDGE_MODEL, [fp]).as_numpy("label")
    np.testing.assert_array_equal(fp_labels, small)


def test_typed_contents_are_accepted(node, holdout):
    """tritonclient always sends raw bytes; typed InferTensorContents come from other clients."""
    import grpc

    from protos import codec, oip_pb2
    from protos.oip_service import InferenceStub

    images = holdout[0][:4]
    request = oip_pb2.ModelInferRequest(model_name=edgeshard_models.EDGE_MODEL)
    tensor = request.inputs.add(name="image", datatype="UINT8", shape=[4, 28, 28])
    tensor.contents.uint_contents.extend(images.reshape(-1).tolist())
    channel = grpc.insecure_channel(node.address)
    try:
        typed = InferenceStub(channel).ModelInfer(request, timeout=10)
    finally:
        channel.close()
    client = tc.InferenceServerClient(node.address)
    try:
        raw = classify(client, edgeshard_models.EDGE_MODEL, images)
    finally:
        client.close()
    np.testing.assert_array_equal(codec.decode_output(typed, "label"), raw)


def test_statistics_count_requests(client, holdout):
    before = client.get_inference_statistics(edgeshard_models.EDGE_MODEL).model_stats[0]
    classify(client, edgeshard_models.EDGE_MODEL, holdout[0][:10], batch=5)
    after = client.get_inference_statistics(edgeshard_models.EDGE_MODEL).model_stats[0]
    assert after.inference_count - before.inference_count == 10
    assert after.inference_stats.success.count - before.inference_stats.success.count == 2
    assert after.execution_count > before.execution_count
