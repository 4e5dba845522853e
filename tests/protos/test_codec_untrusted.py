"""Decoding untrusted tensors: declared sizes are checked against the data before any
allocation, outputs are asked for once, and no input makes the codec fail with anything
but TensorError (Hypothesis fuzz)."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos import codec, oip_pb2
from protos.codec import TensorError

HUGE = 2**40


def request(datatype: str, shape: list[int], raw: bytes) -> oip_pb2.ModelInferRequest:
    req = oip_pb2.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype=datatype, shape=shape)
    req.raw_input_contents.append(raw)
    return req


@pytest.mark.parametrize("datatype,shape,raw,field", [
    ("UINT8", [0, HUGE, HUGE], b"", "inputs[0].shape"),
    ("FP32", [HUGE, 0], b"", "inputs[0].shape"),
    ("BYTES", [HUGE], b"", "inputs[0].shape"),
    ("BYTES", [2**20], b"", "raw_input_contents[0]"),
    ("BYTES", [3], struct.pack("<I", 1) + b"a", "raw_input_contents[0]"),
])
def test_declared_sizes_the_data_does_not_back_are_refused_without_allocating(
        datatype, shape, raw, field):
    tracemalloc.start()
    try:
        with pytest.raises(TensorError) as err:
            codec.decode_inputs(request(datatype, shape, raw))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.field == field
    assert peak < 1024 * 1024  # nothing proportional to the declared size


def test_the_same_limit_holds_for_job_item_batches_and_typed_contents():
    with pytest.raises(TensorError) as err:
        codec.decode_array("items[1]", "UINT8", [0, HUGE, HUGE], b"")
    assert err.value.field == "items[1].shape"
    typed = oip_pb2.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="INT32", shape=[HUGE, HUGE])
    with pytest.raises(TensorError) as err:
        codec.decode_inputs(typed)
    assert err.value.field == "inputs[0].shape"


def test_a_tensor_at_the_limit_is_still_described_not_refused():
    # 1 GiB declared with 0 elements: within the limit, so it decodes to an empty array.
    array = codec.decode_array("a", "UINT8", [0, 2**15, 2**15], b"")
    assert array.shape == (0, 2**15, 2**15) and array.size == 0


def test_an_output_requested_twice_is_refused():
    req = request("UINT8", [1], b"\0")
    req.outputs.add(name="label")
    req.outputs.add(name="confidence")
    req.outputs.add(name="label")
    with pytest.raises(TensorError) as err:
        codec.requested_outputs(req)
    assert err.value.field == "outputs[2].name"
    assert "twice" in err.value.message
    response = oip_pb2.ModelInferResponse()
    with pytest.raises(TensorError):
        codec.encode_outputs(response, {"label": np.zeros(1, np.int64)}, ["label", "label"])
    assert not response.outputs  # nothing half-written


def test_requested_outputs_keeps_order_and_refuses_empty_names():
    req = request("UINT8", [1], b"\0")
    assert codec.requested_outputs(req) == []
    req.outputs.add(name="confidence")
    req.outputs.add(name="label")
    assert codec.requested_outputs(req) == ["confidence", "label"]
    req.outputs.add(name="")
    with pytest.raises(TensorError) as err:
        codec.requested_outputs(req)
    assert err.value.field == "outputs[2].name"


DATATYPES = sorted(codec.DATATYPES)
dims = st.one_of(st.integers(0, 8), st.integers(0, 2**62), st.sampled_from([2**31, 2**40]))


@settings(max_examples=400, deadline=None)
@given(datatype=st.sampled_from(DATATYPES + ["FP8", ""]),
       shape=st.lists(dims, max_size=5), raw=st.binary(max_size=256))
def test_fuzz_raw_tensors_decode_or_raise_tensor_error(datatype, shape, raw):
    try:
        arrays = codec.decode_inputs(request(datatype, shape, raw))
    except TensorError as exc:
        assert exc.field.startswith(("inputs[0]", "raw_input_contents[0]"))
        return
    (array,) = arrays.values()
    assert list(array.shape) == shape
    if datatype != "BYTES":
        assert array.nbytes == len(raw)


@settings(max_examples=300, deadline=None)
@given(datatype=st.sampled_from(DATATYPES), shape=st.lists(dims, max_size=4),
       values=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=16))
def test_fuzz_typed_tensors_decode_or_raise_tensor_error(datatype, shape, values):
    req = oip_pb2.ModelInferRequest(model_name="m")
    tensor = req.inputs.add(name="x", datatype=datatype, shape=shape)
    field = codec.DATATYPES[datatype].contents_field
    if field in ("int_contents", "int64_contents"):
        getattr(tensor.contents, field).extend(values)
    try:
        arrays = codec.decode_inputs(req)
    except TensorError as exc:
        assert exc.field.startswith("inputs[0]")
        return
    assert list(arrays["x"].shape) == shape


@settings(max_examples=300, deadline=None)
@given(datatype=st.sampled_from(DATATYPES), shape=st.lists(dims, max_size=5),
       raw=st.binary(max_size=256))
def test_fuzz_job_item_batches_decode_or_raise_tensor_error(datatype, shape, raw):
    try:
        array = codec.decode_array("items[1]", datatype, shape, raw)
    except TensorError as exc:
        assert exc.field.startswith("items[1]")
        return
    assert list(array.shape) == shape
