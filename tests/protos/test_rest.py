"""The REST binding's JSON <-> message conversion (protos.rest), without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protos import codec, oip_pb2, parameters, rest


def convert(header: dict, binary: bytes = b""):
    return rest.infer_request(header, binary, "m", "2")


def tensor(data, datatype="FP32", shape=None, **extra):
    shape = shape if shape is not None else list(np.shape(data))
    return {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}],
            **extra}


@pytest.mark.parametrize("data,datatype,expected", [
    ([[1, 2], [3, 4]], "INT32", np.array([[1, 2], [3, 4]], np.int32)),
    ([1.5, -2], "FP16", np.array([1.5, -2], np.float16)),
    ([True, False], "BOOL", np.array([True, False])),
    (["héllo", ""], "BYTES", np.array([b"h\xc3\xa9llo", b""], dtype=object)),
    ([[255]], "UINT8", np.array([[255]], np.uint8)),
])
def test_json_data_becomes_the_raw_tensor_the_codec_decodes(data, datatype, expected):
    request, binary = convert(tensor(data, datatype))
    decoded = codec.decode_inputs(request)["x"]
    assert decoded.dtype == expected.dtype
    np.testing.assert_array_equal(decoded, expected)
    assert (request.model_name, request.model_version, binary) == ("m", "2", set())


def test_flat_data_for_a_nested_shape():
    request, _ = convert(tensor([1, 2, 3, 4, 5, 6], "INT64", shape=[2, 3]))
    assert codec.decode_inputs(request)["x"].tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("header,field", [
    (tensor([[1, 2], [3]], "INT32", shape=[3]), "inputs[0].data"),
    (tensor([300], "UINT8"), "inputs[0].data"),
    (tensor([1.5], "INT32"), "inputs[0].data"),
    (tensor([1], "BOOL"), "inputs[0].data"),
    (tensor([1], "BYTES"), "inputs[0].data[0]"),
    (tensor([1, 2], "FP32", shape=[3]), "inputs[0].data"),
    (tensor([1], "FP32", shape=["1"]), "inputs[0].shape"),
    (tensor(5, "FP32", shape=[]), "inputs[0].data"),
    (tensor([1], "COMPLEX"), "inputs[0].datatype"),
    ({"inputs": []}, "inputs"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, "inputs[0].data"),
    (tensor([1], parameters={"p": {"nested": 1}}), "parameters.p"),
    (tensor([1], parameters={"binary_data_output": "yes"}), "parameters.binary_data_output"),
    (tensor([1], outputs=[{"parameters": {}}]), "outputs[0].name"),
    ({"id": 7, "inputs": []}, "id"),
], ids=["ragged", "out-of-range", "float-for-int", "number-for-bool", "number-for-bytes",
        "count", "shape-not-ints", "scalar-data", "datatype", "no-inputs", "no-data",
        "nested-parameter", "binary-flag-type", "output-name", "id-type"])
def test_each_bad_field_is_named(header, field):
    with pytest.raises(codec.TensorError) as info:
        convert(header)
    assert info.value.field == field


def test_binary_inputs_and_outputs():
    raw = np.arange(4, dtype="<f4").tobytes()
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                          "parameters": {"binary_data_size": len(raw)}},
                         {"name": "y", "datatype": "INT8", "shape": [1], "data": [3]}],
              "outputs": [{"name": "x", "parameters": {"binary_data": True,
                                                       "classification": 2}}],
              "parameters": {"routing_key": "cam-1"}}
    body = json.dumps(header).encode() + raw
    parsed, rest_bytes = rest.split_body(body, str(len(body) - len(raw)))
    request, binary = rest.infer_request(parsed, rest_bytes, "m")
    assert binary == {"x"}
    np.testing.assert_array_equal(codec.decode_inputs(request)["x"], np.arange(4))
    assert parameters.get_param(request.outputs[0].parameters, "classification") == 2
    assert "binary_data" not in request.outputs[0].parameters
    assert parameters.get_param(request.parameters, "routing_key") == "cam-1"

    response = oip_pb2.ModelInferResponse(model_name="m", model_version="1", id="r")
    codec.encode_outputs(response, {"x": np.arange(4, dtype=np.float32),
                                    "s": np.array([b"a", b"bc"], dtype=object)})
    out, length = rest.infer_response(response, {"x"})
    head = json.loads(out[:length])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert np.frombuffer(out[length:], "<f4").tolist() == [0, 1, 2, 3]
    assert head["outputs"][1]["data"] == ["a", "bc"]
    everything, length = rest.infer_response(response, {"*"})
    assert len(everything) - length == 16 + 4 + 1 + 4 + 2


@pytest.mark.parametrize("body,length", [(b"{}", "9"), (b"{}", "x"), (b"{x", None)])
def test_bad_bodies(body, length):
    with pytest.raises(codec.TensorError):
        rest.split_body(body, length)


def test_message_dict_writes_64_bit_integers_as_numbers():
    stats = oip_pb2.ModelStatisticsResponse()
    s = stats.model_stats.add(name="m", version="1", inference_count=2**40)
    s.inference_stats.success.count = 3
    s.batch_stats.add(batch_size=4).compute_infer.ns = 5
    data = rest.message_dict(stats)["model_stats"][0]
    assert data["inference_count"] == 2**40
    assert data["inference_stats"]["success"] == {"count": 3, "ns": 0}
    assert data["batch_stats"][0]["batch_size"] == 4
    assert data["batch_stats"][0]["compute_infer"] == {"count": 0, "ns": 5}
