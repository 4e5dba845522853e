"""Any TFLite model a user brings: real pretrained third-party models (MediaPipe's, from
its pip wheel) served config-less by a real edge-node process, compared bit for bit with
the interpreter's own invoke(); detection with NMS; Triton's classification extension;
quantization of FP32 inputs and dequantized outputs; bad inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from ai_edge_litert.interpreter import Interpreter

import edgeshard_models
from ext import _reference as ref
from protos import codec, oip_pb2, parameters
from protos.oip_service import InferenceStub

FACE = "face_detection_short_range.tflite"  # [1,128,128,3] -> [1,896,16] + [1,896,1]
POSE = "pose_landmark_full.tflite"  # five outputs, batchable
SELFIE = "selfie_segmentation.tflite"  # [1,256,256,3] -> [1,256,256,1], batchable

DETECTION_CONFIG = """
task = "detection"

[detection]
boxes = "regressors"
scores = "classificators"
strides = [8, 16, 16, 16]
anchors_per_cell = 2
score_threshold = 0.05
iou_threshold = 0.3
max_detections = 20
"""


@pytest.fixture(scope="module")
def repository(mediapipe_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("any-model")
    for name, file in (("face", FACE), ("pose", POSE), ("selfie", SELFIE),
                       ("face_boxes", FACE)):
        (root / name / "1").mkdir(parents=True)
        shutil.copy(mediapipe_models / file, root / name / "1" / "model.tflite")
    (root / "face_boxes" / "config.toml").write_text(DETECTION_CONFIG)
    # The shipped int8 classifier without its config: served as tensors (int8 in and out).
    edge = edgeshard_models.repository_path() / edgeshard_models.EDGE_MODEL
    (root / "mnist_raw" / "1").mkdir(parents=True)
    shutil.copy(edge / "1" / "model.tflite", root / "mnist_raw" / "1" / "model.tflite")
    shutil.copytree(edge, root / edgeshard_models.EDGE_MODEL)
    return root


@pytest.fixture(scope="module")
def node(repository, tmp_path_factory):
    from coordinator.cli.launcher import start_node

    proc = start_node("any-model", repository, tmp_path_factory.mktemp("any-node"),
                      extra_args=["--workers", "2"])
    yield proc
    proc.stop(grace=5)


@pytest.fixture
def client(node):
    c = tc.InferenceServerClient(node.address)
    yield c
    c.close()


def direct(path: Path, *inputs: np.ndarray) -> list[np.ndarray]:
    """The interpreter's own answer: resize to the inputs, invoke, every output in order."""
    interp = Interpreter(model_path=str(path))
    for detail, x in zip(interp.get_input_details(), inputs, strict=True):
        interp.resize_tensor_input(detail["index"], x.shape)
    interp.allocate_tensors()
    for detail, x in zip(interp.get_input_details(), inputs, strict=True):
        interp.set_tensor(detail["index"], x)
    interp.invoke()
    return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]


def infer(client, model, arrays: dict[str, np.ndarray], outputs=None, **kw):
    inputs = []
    for name, array in arrays.items():
        inp = tc.InferInput(name, list(array.shape), tc.np_to_triton_dtype(array.dtype))
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    return client.infer(model, inputs, outputs=outputs, **kw)


def test_config_less_models_get_metadata_and_config_from_the_model(client, repository):
    meta = client.get_model_metadata("face")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [1, 128, 128, 3])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("regressors", "FP32", [1, 896, 16]), ("classificators", "FP32", [1, 896, 1])]
    config = client.get_model_config("face").config
    # The detector folds a larger batch into its anchors: never batched, full shapes.
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [1, 128, 128, 3]
    assert config.parameters["task"].string_value == "tensor"

    pose = client.get_model_metadata("pose")
    assert len(pose.outputs) == 5
    assert all(list(t.shape)[0] == -1 for t in (*pose.inputs, *pose.outputs))
    pose_config = client.get_model_config("pose").config
    assert pose_config.max_batch_size == 32  # batchable, no config: the default
    assert list(pose_config.output[2].dims) == [256, 256, 1]
    assert client.is_model_ready("selfie")


def test_every_output_is_bit_exact_with_a_direct_invoke(client, repository):
    rng = np.random.default_rng(7)
    for model, shape in (("face", (1, 128, 128, 3)), ("pose", (1, 256, 256, 3)),
                         ("selfie", (1, 256, 256, 3))):
        x = rng.random(shape, dtype=np.float32)
        path = repository / model / "1" / "model.tflite"
        expected = direct(path, x)
        name = client.get_model_metadata(model).inputs[0].name
        result = infer(client, model, {name: x})
        names = [t.name for t in client.get_model_metadata(model).outputs]
        assert len(names) == len(expected)
        for out_name, want in zip(names, expected, strict=True):
            got = result.as_numpy(out_name)
            assert got.dtype == want.dtype and got.shape == want.shape, out_name
            np.testing.assert_array_equal(got, want, err_msg=f"{model}:{out_name}")


def test_a_batchable_model_serves_a_batch_like_the_interpreter(client, repository):
    x = np.random.default_rng(3).random((3, 256, 256, 3), dtype=np.float32)
    expected = direct(repository / "selfie" / "1" / "model.tflite", x)
    result = infer(client, "selfie", {"input_1": x})
    np.testing.assert_array_equal(result.as_numpy("activation_10"), expected[0])


def test_an_unbatchable_model_refuses_a_batch_with_a_clear_error(client):
    x = np.zeros((2, 128, 128, 3), np.float32)
    with pytest.raises(tc.InferenceServerException) as err:
        infer(client, "face", {"input": x})
    assert "inputs[0].shape" in str(err.value) and "[1, 128, 128, 3]" in str(err.value)


@pytest.mark.parametrize("arrays,text", [
    ({"wrong": np.zeros((1, 128, 128, 3), np.float32)}, "unknown input 'wrong'"),
    ({"input": np.zeros((1, 128, 128, 3), np.int32)}, "INT32 is not accepted"),
    ({"input": np.zeros((1, 64, 64, 3), np.float32)}, "must be [1, 128, 128, 3]"),
])
def test_bad_inputs_are_refused_naming_the_field(client, arrays, text):
    with pytest.raises(tc.InferenceServerException) as err:
        infer(client, "face", arrays)
    assert text in str(err.value)
    assert client.is_server_live()


def test_a_missing_batch_dimension_is_named(client):
    x = np.zeros((256, 256, 3), np.float32)
    with pytest.raises(tc.InferenceServerException) as err:
        infer(client, "selfie", {"input_1": x})
    assert "the batch dimension is missing" in str(err.value)
    with pytest.raises(tc.InferenceServerException) as err:
        infer(client, "face", {"input": np.zeros((2, 128, 128, 3), np.float32)})
    assert "one item per request" in str(err.value) and "-1" not in str(err.value)


def test_unknown_output_and_bad_class_count_are_refused(client, node):
    x = {"input": np.zeros((1, 128, 128, 3), np.float32)}
    with pytest.raises(tc.InferenceServerException) as err:
        infer(client, "face", x, outputs=[tc.InferRequestedOutput("boxes")])
    assert "unknown output 'boxes'" in str(err.value)
    # tritonclient never sends class_count 0; a raw request can.
    tensor, raw = codec.encode_input_tensor("input", x["input"])
    request = oip_pb2.ModelInferRequest(model_name="face", inputs=[tensor],
                                        raw_input_contents=[raw])
    out = request.outputs.add(name="regressors")
    for bad in (0, "three"):
        parameters.set_param(out.parameters, "classification", bad)
        with grpc.insecure_channel(node.address) as channel, pytest.raises(grpc.RpcError) as e:
            InferenceStub(channel).ModelInfer(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "outputs[0].parameters.classification" in e.value.details()
    parameters.set_param(request.parameters, "dequantize", "yes")
    del request.outputs[:]
    with grpc.insecure_channel(node.address) as channel, pytest.raises(grpc.RpcError) as e:
        InferenceStub(channel).ModelInfer(request, timeout=10)
    assert "parameters.dequantize: must be a bool" in e.value.details()


def test_int8_model_takes_fp32_quantized_with_its_own_scale_and_dequantizes_on_request(
        client, repository):
    path = repository / "mnist_raw" / "1" / "model.tflite"
    detail = Interpreter(model_path=str(path)).get_input_details()[0]
    out_detail = Interpreter(model_path=str(path)).get_output_details()[0]
    scale, zero_point = detail["quantization"]
    meta = client.get_model_metadata("mnist_raw")
    name = meta.inputs[0].name
    assert meta.inputs[0].datatype == "INT8" and meta.outputs[0].datatype == "INT8"
    x = np.random.default_rng(5).random((4, 28, 28, 1), dtype=np.float32)
    q = ref.quantize(x, scale, zero_point, np.int8)
    (expected,) = direct(path, q)
    out_name = meta.outputs[0].name
    native = infer(client, "mnist_raw", {name: q}).as_numpy(out_name)
    np.testing.assert_array_equal(native, expected)
    from_fp32 = infer(client, "mnist_raw", {name: x}).as_numpy(out_name)
    np.testing.assert_array_equal(from_fp32, expected)
    deq = infer(client, "mnist_raw", {name: x}, parameters={"dequantize": True}).as_numpy(
        out_name)
    o_scale, o_zero = out_detail["quantization"]
    assert deq.dtype == np.float32
    np.testing.assert_array_equal(deq, ref.dequantize(expected, o_scale, o_zero))


def test_class_count_returns_tritons_top_k_strings(client, holdout):
    images, _ = holdout
    batch = images[:4]
    model = edgeshard_models.EDGE_MODEL
    assert "classification" in client.get_server_metadata().extensions
    full = infer(client, model, {"image": batch}).as_numpy("probabilities")
    result = infer(client, model, {"image": batch},
                   outputs=[tc.InferRequestedOutput("probabilities", class_count=3)])
    top = result.as_numpy("probabilities")
    assert top.shape == (4, 3) and top.dtype == object
    for row, probs in zip(top, full, strict=True):
        order = np.argsort(-probs.astype(np.float64), kind="stable")[:3]
        expected = [f"{probs[i]:f}:{i}:{i}".encode() for i in order]  # labels are "0".."9"
        assert list(row) == expected


def test_detection_boxes_after_nms_match_the_numpy_reference(client, repository):
    rng = np.random.default_rng(11)
    x = rng.random((1, 128, 128, 3), dtype=np.float32) * 2 - 1
    regressors, classificators = direct(repository / "face" / "1" / "model.tflite", x)
    # The reference: anchors per the config, decode, sigmoid of the clipped score, NMS.
    from edge_node.tasks.detection import ssd_anchors

    anchors = ssd_anchors(128, 128, [8, 16, 16, 16], [2, 2, 2, 2], 0.5)
    assert anchors.shape == (896, 4)
    boxes = ref.decode_boxes(regressors[0], anchors, (128, 128, 128, 128))
    raw = np.clip(classificators[0, :, 0], np.float32(-100), np.float32(100))
    scores = np.float32(1) / (np.float32(1) + np.exp(-raw))
    kept = ref.nms(boxes, scores, 0.3, 0.05, 20)
    assert kept.size > 0  # the low threshold leaves detections on noise

    result = infer(client, "face_boxes", {"input": x})
    count = int(result.as_numpy("count")[0])
    assert count == kept.size
    np.testing.assert_array_equal(result.as_numpy("boxes")[0, :count], boxes[kept])
    np.testing.assert_array_equal(result.as_numpy("scores")[0, :count], scores[kept])
    assert not result.as_numpy("boxes")[0, count:].any()  # padding
    meta = client.get_model_metadata("face_boxes")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("boxes", "FP32", [1, 20, 4]), ("scores", "FP32", [1, 20]),
        ("classes", "INT32", [1, 20]), ("count", "INT32", [1])]
