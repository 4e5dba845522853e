"""The tensor codec: round trips for every datatype and every validation rule."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from protos import codec, oip_pb2, parameters
from protos.codec import TensorError

NUMERIC = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 8, 9]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 8, 9]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 8, 9]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [7, 8, 9]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [-1, 2, -3]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1], [-1, 2, -3]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [-1, 2, -3]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [-1, 2, -3]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504.0], [1e-3, 2.0, -3.0]], dtype=np.float16),
    "FP32": np.array([[0.5, -1.25, 3.4e38], [1e-7, 2.0, -3.0]], dtype=np.float32),
    "FP64": np.array([[0.5, -1.25, 1.7e308], [1e-300, 2.0, -3.0]], dtype=np.float64),
}
BYTES = np.array([[b"", b"a", b"\x00\xffbinary"], [b"xyz", b"0123456789", b"\x00"]], dtype=object)
ALL = {**NUMERIC, "BYTES": BYTES}


def raw_request(arrays: dict[str, np.ndarray]) -> oip_pb2.ModelInferRequest:
    request = oip_pb2.ModelInferRequest(model_name="m")
    for name, array in arrays.items():
        tensor, raw = codec.encode_input_tensor(name, array)
        request.inputs.append(tensor)
        request.raw_input_contents.append(raw)
    return request


def typed_request(datatype: str, array: np.ndarray, name: str = "x") -> oip_pb2.ModelInferRequest:
    request = oip_pb2.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
    field = codec.DATATYPES[datatype].contents_field
    getattr(tensor.contents, field).extend(array.reshape(-1).tolist())
    return request


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    if expected.dtype == object:
        assert actual.dtype == object
        assert actual.tolist() == expected.tolist()
    else:
        assert actual.dtype == expected.dtype.newbyteorder("<")
        np.testing.assert_array_equal(actual, expected)


# --- the datatype table -------------------------------------------------------------------


def test_table_covers_the_protocol_datatypes():
    assert list(codec.DATATYPES) == [
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    ]  # fmt: skip
    fields = {name: d.contents_field for name, d in codec.DATATYPES.items()}
    assert fields == {
        "BOOL": "bool_contents",
        "UINT8": "uint_contents",
        "UINT16": "uint_contents",
        "UINT32": "uint_contents",
        "UINT64": "uint64_contents",
        "INT8": "int_contents",
        "INT16": "int_contents",
        "INT32": "int_contents",
        "INT64": "int64_contents",
        "FP16": None,
        "FP32": "fp32_contents",
        "FP64": "fp64_contents",
        "BYTES": "bytes_contents",
    }
    for d in codec.DATATYPES.values():
        assert d.dtype == d.dtype.newbyteorder("<"), d.name  # the wire is little-endian


@pytest.mark.parametrize("datatype", list(ALL))
def test_datatype_of_and_dtype_of_are_inverse(datatype):
    assert codec.datatype_of(ALL[datatype].dtype) == datatype
    assert codec.datatype_of(codec.dtype_of(datatype)) == datatype


def test_datatype_of_big_endian_and_strings():
    assert codec.datatype_of(np.dtype(">f4")) == "FP32"
    assert codec.datatype_of(np.dtype("S3")) == "BYTES"
    assert codec.datatype_of(np.dtype("U3")) == "BYTES"
    with pytest.raises(TypeError, match="complex"):
        codec.datatype_of(np.complex64)


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(ALL))
def test_raw_round_trip_through_the_wire(datatype):
    array = ALL[datatype]
    request = raw_request({"x": array})
    assert request.inputs[0].datatype == datatype
    assert list(request.inputs[0].shape) == [2, 3]
    wire = oip_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert_same(codec.decode_inputs(wire)["x"], array)


@pytest.mark.parametrize("datatype", [d for d in ALL if codec.DATATYPES[d].contents_field])
def test_typed_round_trip_through_the_wire(datatype):
    array = ALL[datatype]
    request = oip_pb2.ModelInferRequest.FromString(
        typed_request(datatype, array).SerializeToString()
    )
    assert_same(codec.decode_inputs(request)["x"], array)


@pytest.mark.parametrize("datatype", list(ALL))
def test_outputs_round_trip(datatype):
    response = oip_pb2.ModelInferResponse(model_name="m")
    codec.encode_outputs(response, {"y": ALL[datatype]})
    wire = oip_pb2.ModelInferResponse.FromString(response.SerializeToString())
    assert wire.outputs[0].datatype == datatype
    assert_same(codec.decode_output(wire, "y"), ALL[datatype])
    assert_same(codec.decode_outputs(wire)["y"], ALL[datatype])


def test_decode_output_reads_typed_contents():
    response = oip_pb2.ModelInferResponse()
    out = response.outputs.add(name="y", datatype="INT64", shape=[3])
    out.contents.int64_contents.extend([1, -2, 3])
    assert codec.decode_output(response, "y").tolist() == [1, -2, 3]


def test_several_inputs_keep_their_order_and_names():
    arrays = {"b": NUMERIC["INT8"], "a": NUMERIC["FP32"], "c": BYTES}
    decoded = codec.decode_inputs(raw_request(arrays))
    assert list(decoded) == ["b", "a", "c"]
    for name, array in arrays.items():
        assert_same(decoded[name], array)


def test_empty_and_scalar_tensors():
    arrays = {"empty": np.zeros((0, 4), np.float32), "scalar": np.array(7, np.int32)}
    decoded = codec.decode_inputs(raw_request(arrays))
    assert decoded["empty"].shape == (0, 4)
    assert decoded["scalar"].shape == ()
    assert decoded["scalar"] == 7
    typed = typed_request("FP32", np.zeros((0, 4), np.float32))
    assert codec.decode_inputs(typed)["x"].shape == (0, 4)


def test_bytes_raw_encoding_is_length_prefixed():
    tensor, raw = codec.encode_input_tensor("s", np.array([b"ab", b""], dtype=object))
    assert tensor.datatype == "BYTES"
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)


def test_str_and_fixed_width_bytes_arrays_encode_as_utf8_bytes():
    _, raw = codec.encode_input_tensor("s", np.array(["hé", "x"]))
    request = oip_pb2.ModelInferRequest()
    request.inputs.add(name="s", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(raw)
    assert codec.decode_inputs(request)["s"].tolist() == ["hé".encode(), b"x"]
    _, raw = codec.encode_input_tensor("s", np.array([b"ab", b"c"]))
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"


def test_big_endian_and_non_contiguous_arrays_are_sent_little_endian_row_major():
    array = np.arange(12, dtype=">i4").reshape(3, 4).T
    tensor, raw = codec.encode_input_tensor("x", array)
    assert tensor.datatype == "INT32"
    assert list(tensor.shape) == [4, 3]
    assert raw == np.ascontiguousarray(array, dtype="<i4").tobytes()


def test_raw_decode_is_zero_copy_and_read_only():
    raw = np.arange(6, dtype="<f4").tobytes()
    request = oip_pb2.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    request.raw_input_contents.append(raw)
    wire_bytes = request.raw_input_contents[0]
    array = codec._decode_raw(wire_bytes, codec.DATATYPES["FP32"], (2, 3), "f")
    assert not array.flags.owndata
    assert not array.flags.writeable
    assert np.shares_memory(array, np.frombuffer(wire_bytes, np.uint8))
    decoded = codec.decode_inputs(request)["x"]
    assert not decoded.flags.owndata
    assert not decoded.flags.writeable
    np.testing.assert_array_equal(decoded, np.arange(6, dtype=np.float32).reshape(2, 3))


# --- outputs selection -----------------------------------------------------------------------


def test_encode_outputs_filters_and_orders_by_requested():
    outputs = {"a": np.zeros(1, np.int8), "b": np.ones(2, np.float32), "c": BYTES}
    response = oip_pb2.ModelInferResponse()
    codec.encode_outputs(response, outputs, ["c", "a"])
    assert [o.name for o in response.outputs] == ["c", "a"]
    assert len(response.raw_output_contents) == 2
    assert_same(codec.decode_output(response, "a"), outputs["a"])
    assert_same(codec.decode_output(response, "c"), BYTES)


def test_encode_outputs_without_requested_sends_all_in_order():
    response = oip_pb2.ModelInferResponse()
    codec.encode_outputs(response, {"z": np.zeros(1), "y": np.zeros(2)}, None)
    assert [o.name for o in response.outputs] == ["z", "y"]
    response = oip_pb2.ModelInferResponse()
    codec.encode_outputs(response, {"z": np.zeros(1)}, [])
    assert [o.name for o in response.outputs] == ["z"]


def test_encode_outputs_unknown_requested_name():
    response = oip_pb2.ModelInferResponse()
    with pytest.raises(TensorError) as info:
        codec.encode_outputs(response, {"a": np.zeros(1)}, ["a", "nope"])
    assert info.value.field == "outputs[1].name"
    assert "'nope'" in info.value.message
    assert len(response.outputs) == 0  # nothing half-written


def test_encode_unsupported_dtype():
    with pytest.raises(TensorError) as info:
        codec.encode_input_tensor("x", np.zeros(2, np.complex64))
    assert info.value.field == "inputs['x'].datatype"


def test_decode_output_missing_name():
    response = oip_pb2.ModelInferResponse()
    codec.encode_outputs(response, {"a": np.zeros(1)})
    with pytest.raises(TensorError) as info:
        codec.decode_output(response, "b")
    assert info.value.field == "outputs"
    assert "'b'" in info.value.message


# --- validation errors ------------------------------------------------------------------------


def error_of(request: oip_pb2.ModelInferRequest) -> TensorError:
    with pytest.raises(TensorError) as info:
        codec.decode_inputs(request)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == f"{info.value.field}: {info.value.message}"
    return info.value


def test_unknown_datatype():
    request = raw_request({"a": NUMERIC["INT8"], "b": NUMERIC["FP32"]})
    request.inputs[1].datatype = "FP8"
    err = error_of(request)
    assert err.field == "inputs[1].datatype"
    assert "'FP8'" in err.message


def test_negative_dims():
    request = raw_request({"a": NUMERIC["INT8"]})
    request.inputs[0].shape[:] = [-1, 3]
    err = error_of(request)
    assert err.field == "inputs[0].shape"
    assert "[-1, 3]" in err.message


def test_raw_byte_size_mismatch_names_expected_and_got():
    request = raw_request({"a": NUMERIC["INT8"], "b": NUMERIC["FP32"]})
    request.raw_input_contents[1] = request.raw_input_contents[1][:-1]
    err = error_of(request)
    assert err.field == "raw_input_contents[1]"
    assert "expected 24 bytes" in err.message
    assert "got 23" in err.message


def test_raw_count_mismatch():
    request = raw_request({"a": NUMERIC["INT8"], "b": NUMERIC["FP32"]})
    del request.raw_input_contents[1]
    err = error_of(request)
    assert err.field == "raw_input_contents"
    assert "1 entries for 2 inputs" in err.message


def test_raw_for_some_inputs_only_is_rejected_even_with_typed_rest():
    request = raw_request({"a": NUMERIC["INT8"]})
    typed = request.inputs.add(name="b", datatype="INT32", shape=[1])
    typed.contents.int_contents.append(5)
    assert error_of(request).field == "raw_input_contents"


def test_both_raw_and_typed_for_one_input():
    request = raw_request({"a": NUMERIC["INT8"]})
    request.inputs[0].contents.int_contents.extend([1] * 6)
    err = error_of(request)
    assert err.field == "inputs[0].contents"
    assert "raw_input_contents" in err.message


def test_duplicate_input_names():
    request = raw_request({"a": NUMERIC["INT8"], "b": NUMERIC["INT8"]})
    request.inputs[1].name = "a"
    err = error_of(request)
    assert err.field == "inputs[1].name"
    assert "'a'" in err.message


def test_typed_count_mismatch():
    request = typed_request("FP32", NUMERIC["FP32"])
    request.inputs[0].contents.fp32_contents.append(1.0)
    err = error_of(request)
    assert err.field == "inputs[0].contents.fp32_contents"
    assert "expected 6 values" in err.message
    assert "got 7" in err.message


def test_typed_contents_missing_entirely():
    request = oip_pb2.ModelInferRequest()
    request.inputs.add(name="x", datatype="INT64", shape=[2])
    err = error_of(request)
    assert err.field == "inputs[0].contents.int64_contents"
    assert "got 0" in err.message


def test_typed_values_out_of_range_for_narrow_ints():
    request = oip_pb2.ModelInferRequest()
    request.inputs.add(name="x", datatype="INT8", shape=[2]).contents.int_contents.extend([1, 300])
    err = error_of(request)
    assert err.field == "inputs[0].contents.int_contents"
    assert "INT8" in err.message


def test_fp16_has_no_typed_contents():
    request = oip_pb2.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP16", shape=[1])
    err = error_of(request)
    assert err.field == "inputs[0].contents"
    assert "raw" in err.message


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (struct.pack("<I", 1) + b"a" + b"\x00\x00", "ends after 1 of 2"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 5) + b"ab", "declares 5 bytes"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + b"!", "1 trailing bytes"),
    ],
)
def test_malformed_bytes_raw(raw, fragment):
    request = oip_pb2.ModelInferRequest()
    request.inputs.add(name="s", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(raw)
    err = error_of(request)
    assert err.field == "raw_input_contents[0]"
    assert fragment in err.message


# --- parameters ----------------------------------------------------------------------------------


def test_parameters_round_trip_through_the_wire():
    request = oip_pb2.ModelInferRequest()
    values = {
        "flag": True,
        "n": -5,
        "big": 2**64 - 1,
        "s": "hello",
        "f": 0.25,
        "np_int": np.int32(3),
        "np_float": np.float32(1.5),
        "np_bool": np.bool_(False),
    }
    for key, value in values.items():
        parameters.set_param(request.parameters, key, value)
    wire = oip_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert wire.parameters["n"].WhichOneof("parameter_choice") == "int64_param"
    assert wire.parameters["big"].WhichOneof("parameter_choice") == "uint64_param"
    got = {key: parameters.get_param(wire.parameters, key) for key in values}
    assert got == {**values, "np_int": 3, "np_float": 1.5, "np_bool": False}
    assert type(got["flag"]) is bool
    assert type(got["np_bool"]) is bool


def test_get_param_default_and_overwrite():
    params = oip_pb2.ModelInferRequest().parameters
    assert parameters.get_param(params, "missing", 42) == 42
    params["empty"].CopyFrom(oip_pb2.InferParameter())
    assert parameters.get_param(params, "empty", "d") == "d"
    parameters.set_param(params, "k", 1)
    parameters.set_param(params, "k", "now a string")
    assert params["k"].WhichOneof("parameter_choice") == "string_param"
    assert parameters.get_param(params, "k") == "now a string"


def test_set_param_rejects_what_does_not_fit():
    params = oip_pb2.ModelInferRequest().parameters
    with pytest.raises(ValueError, match="64 bits"):
        parameters.set_param(params, "k", 2**64)
    with pytest.raises(TypeError, match="list"):
        parameters.set_param(params, "k", [1])
    assert "k" not in params
