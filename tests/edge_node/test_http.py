"""The Open Inference Protocol HTTP/REST binding of a real edge-node process, driven by
the stock Triton client (tritonclient.http) and the curl binary."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

import edgeshard_models
from coordinator.cli.launcher import start_node

pytestmark = pytest.mark.timeout(120)

EDGE = edgeshard_models.EDGE_MODEL
PLAIN = "plain_mnist"  # the edge model's TFLite file without a config.toml
MAX_BODY = 1024 * 1024  # the node's --max-message-bytes (the smallest allowed)


@pytest.fixture(scope="module")
def http_node(tmp_path_factory, shipped_repository):
    workdir = tmp_path_factory.mktemp("http-node")
    repository = workdir / "repository"
    shutil.copytree(shipped_repository, repository)
    (repository / PLAIN / "1").mkdir(parents=True)
    shutil.copy(shipped_repository / EDGE / "1" / "model.tflite", repository / PLAIN / "1")
    proc = start_node("http-node", repository, workdir, extra_args=[
        "--http-port", "0", "--workers", "1", "--max-message-bytes", str(MAX_BODY)])
    yield proc
    proc.stop(grace=5)


@pytest.fixture
def client(http_node):
    c = th.InferenceServerClient(f"127.0.0.1:{http_node.info['http_port']}")
    yield c
    c.close()


def curl(node, path: str, body: bytes | None = None, *headers: str) -> tuple[int, dict]:
    """(HTTP status, JSON answer) of the real curl binary."""
    cmd = ["curl", "-sS", "-w", "\n%{http_code}", *[a for h in headers for a in ("-H", h)]]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    out = subprocess.run([*cmd, f"http://127.0.0.1:{node.info['http_port']}{path}"],
                         input=body, capture_output=True, timeout=30, check=True).stdout
    text, _, status = out.rpartition(b"\n")
    return int(status), json.loads(text)


@pytest.fixture(scope="module")
def sample(holdout):
    """Every fifth hold-out image (the file is sorted by label) as NHWC, and its label."""
    images, labels = holdout
    return images[::5, ..., None], labels[::5]


def image_input(images: np.ndarray, binary: bool) -> th.InferInput:
    inp = th.InferInput("image", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images, binary_data=binary)
    return inp


def test_ready_file_reports_the_http_port(http_node):
    assert isinstance(http_node.info["http_port"], int) and http_node.info["http_port"] > 0


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "edgeshard-edge-node"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready(EDGE)
    assert client.is_model_ready(EDGE, "1")
    assert not client.is_model_ready(EDGE, "7")


def test_model_metadata_and_config(client):
    meta = client.get_model_metadata(EDGE)
    assert meta["name"] == EDGE and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}]
    assert {t["name"]: t["datatype"] for t in meta["outputs"]} == {
        "probabilities": "FP32", "label": "INT64", "confidence": "FP32"}
    assert client.get_model_metadata(EDGE, "1") == meta
    config = client.get_model_config(EDGE)
    assert config["max_batch_size"] == 64
    assert config["input"][0]["dims"] == [28, 28, 1]
    assert [o["name"] for o in config["output"]] == ["probabilities", "label", "confidence"]
    assert config["parameters"]["task"] == {"string_value": "classification"}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_classifies_the_holdout_like_the_model_card(client, sample, binary):
    images, labels = sample
    got = []
    for i in range(0, len(images), 50):
        result = client.infer(EDGE, [image_input(images[i:i + 50], binary)], outputs=[
            th.InferRequestedOutput("label", binary_data=binary),
            th.InferRequestedOutput("probabilities", binary_data=binary)])
        assert result.as_numpy("probabilities").shape == (50, 10)
        got.append(result.as_numpy("label"))
        params = result.get_response()["parameters"]
        assert params["model_version"] == "1" and params["node"] == "http-node"
    accuracy = float((np.concatenate(got) == labels).mean())
    assert accuracy >= edgeshard_models.model_card()[EDGE]["holdout_accuracy_int8"] - 0.05


def test_json_and_binary_answers_agree(client, sample):
    images = sample[0][:8]
    json_answer = client.infer(EDGE, [image_input(images, False)], outputs=[
        th.InferRequestedOutput("probabilities", binary_data=False)])
    binary_answer = client.infer(EDGE, [image_input(images, True)], outputs=[
        th.InferRequestedOutput("probabilities", binary_data=True)])
    np.testing.assert_array_equal(json_answer.as_numpy("probabilities"),
                                  binary_answer.as_numpy("probabilities"))
    assert "data" in json_answer.get_response()["outputs"][0]
    assert "binary_data_size" in binary_answer.get_response()["outputs"][0]["parameters"]


def test_class_count_returns_triton_classification_strings(client, sample):
    images, labels = sample
    result = client.infer(EDGE, [image_input(images[:4], True)], outputs=[
        th.InferRequestedOutput("probabilities", class_count=3)])
    top = result.as_numpy("probabilities")
    assert top.shape == (4, 3)
    value, index, label = top[0, 0].decode().split(":")
    assert 0.0 < float(value) <= 1.0 and index == label
    best = client.infer(EDGE, [image_input(images[:4], True)]).as_numpy("label")
    assert [int(row[0].decode().split(":")[1]) for row in top] == list(best)


def test_statistics_count_requests(client, sample):
    client.infer(EDGE, [image_input(sample[0][:2], True)])
    stats = client.get_inference_statistics(EDGE)["model_stats"]
    assert stats[0]["name"] == EDGE and stats[0]["inference_count"] >= 2
    assert stats[0]["inference_stats"]["success"]["count"] >= 1


def test_config_less_model_serves_its_own_tensors(client):
    meta = client.get_model_metadata(PLAIN)
    (tensor,) = meta["inputs"]
    config = client.get_model_config(PLAIN)
    assert config["parameters"]["task"] == {"string_value": "tensor"}
    shape = [1 if d < 0 else d for d in tensor["shape"]]
    dtype = {"INT8": np.int8, "UINT8": np.uint8, "FP32": np.float32}[tensor["datatype"]]
    inp = th.InferInput(tensor["name"], shape, tensor["datatype"])
    inp.set_data_from_numpy(np.zeros(shape, dtype), binary_data=False)
    result = client.infer(PLAIN, [inp])
    for out in meta["outputs"]:
        assert result.as_numpy(out["name"]).shape[0] == 1


def test_curl_with_a_json_body(http_node, sample):
    images, labels = sample
    body = json.dumps({"id": "curl-1", "inputs": [{
        "name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8",
        "data": images[0].tolist()}],  # nested lists, as a person would write them
        "outputs": [{"name": "label"}]}).encode()
    status, answer = curl(http_node, f"/v2/models/{EDGE}/infer", body)
    assert status == 200, answer
    assert answer["id"] == "curl-1"
    assert answer["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [1],
                                  "data": [int(labels[0])]}]
    assert curl(http_node, "/v2/health/ready") == (200, {"ready": True})


@pytest.mark.parametrize("body,field", [
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1, 1], "datatype": "UINT8",
                             "data": [0] * 784}]}).encode(), "inputs[0].shape"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                             "data": [0] * 10}]}).encode(), "inputs[0].data"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                             "data": ["a"] * 784}]}).encode(), "inputs[0].data"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "FLOAT",
                             "data": [0] * 784}]}).encode(), "inputs[0].datatype"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "BYTES",
                             "data": ["x"] * 784}]}).encode(), "inputs[0]"),
    (json.dumps({"inputs": [{"name": "pixels", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                             "data": [0] * 784}]}).encode(), "inputs[0].name"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                             "data": [0] * 784}], "outputs": [{"name": "logits"}]}).encode(),
     "outputs[0].name"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                             "data": [0] * 784}],
                 "outputs": [{"name": "label", "parameters": {"classification": 0}}]}).encode(),
     "outputs[0].parameters.classification"),
], ids=["bad-json", "not-an-object", "wrong-shape", "too-few-elements", "strings-for-uint8",
        "unknown-datatype", "wrong-datatype", "unknown-input", "unknown-output",
        "bad-class-count"])
def test_bad_input_is_a_400_naming_the_field(http_node, body, field):
    status, answer = curl(http_node, f"/v2/models/{EDGE}/infer", body)
    assert status == 400, answer
    assert answer["error"].startswith(field), answer
    assert "Traceback" not in answer["error"]


def test_binary_sizes_that_do_not_match_the_body_are_refused(http_node):
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1],
                                     "datatype": "UINT8",
                                     "parameters": {"binary_data_size": 784}}]}).encode()
    port = http_node.info["http_port"]
    cmd = ["curl", "-sS", "-w", "\n%{http_code}", "-H", "Content-Type: application/octet-stream",
           "-H", f"Inference-Header-Content-Length: {len(header)}", "--data-binary", "@-",
           f"http://127.0.0.1:{port}/v2/models/{EDGE}/infer"]
    out = subprocess.run(cmd, input=header + bytes(100), capture_output=True, timeout=30,
                         check=True).stdout
    text, _, status = out.rpartition(b"\n")
    assert int(status) == 400
    assert json.loads(text)["error"].startswith("inputs[0].parameters.binary_data_size")


def test_unknown_model_and_route_are_404(http_node, client):
    status, answer = curl(http_node, "/v2/models/nope")
    assert status == 404 and "nope" in answer["error"]
    body = json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1],
                                   "datatype": "UINT8", "data": [0] * 784}]}).encode()
    status, answer = curl(http_node, "/v2/models/nope/infer", body)
    assert status == 404 and "nope" in answer["error"]
    status, answer = curl(http_node, "/v2/nothing/here")
    assert status == 404 and "error" in answer
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "404"


def test_a_body_over_the_message_limit_is_a_413(http_node):
    body = b'{"inputs": [], "pad": "' + b"x" * MAX_BODY + b'"}'
    status, answer = curl(http_node, f"/v2/models/{EDGE}/infer", body)
    assert status == 413
    assert str(MAX_BODY) in answer["error"]


def test_an_expired_timeout_parameter_is_a_504(client, sample):
    with pytest.raises(InferenceServerException) as info:
        client.infer(EDGE, [image_input(sample[0][:1], True)], timeout=1)  # 1 microsecond
    assert info.value.status() == "504"
    assert "deadline" in info.value.message()
