"""Bad input gets a clear status naming the field, and the node keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import edgeshard_models
from protos import oip_pb2
from protos.oip_service import InferenceStub

EDGE = edgeshard_models.EDGE_MODEL
Tensor = oip_pb2.ModelInferRequest.InferInputTensor


@pytest.fixture
def stub(node):
    channel = grpc.insecure_channel(node.address)
    yield InferenceStub(channel)
    channel.close()


def request(shape, datatype="UINT8", raw=None, model=EDGE, version="", name="image"):
    if raw is None:
        dtype = {"UINT8": np.uint8, "INT8": np.int8, "FP32": np.float32, "INT32": np.int32,
                 "FP64": np.float64}[datatype]
        raw = np.zeros(shape, dtype=dtype).tobytes()
    return oip_pb2.ModelInferRequest(
        model_name=model, model_version=version,
        inputs=[Tensor(name=name, datatype=datatype, shape=shape)], raw_input_contents=[raw],
    )


def still_serving(stub) -> None:
    response = stub.ModelInfer(request([2, 28, 28]), timeout=10)
    assert response.model_name == EDGE and len(response.outputs) == 3


CASES = [
    ("wrong dtype", request([1, 28, 28, 1], "INT32"), grpc.StatusCode.INVALID_ARGUMENT,
     "inputs[0].datatype"),
    ("float64", request([1, 28, 28, 1], "FP64"), grpc.StatusCode.INVALID_ARGUMENT,
     "inputs[0].datatype"),
    ("rank 2", request([28, 28]), grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].shape"),
    ("rank 5", request([1, 28, 28, 1, 1]), grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].shape"),
    ("3 channels for a 1-channel model", request([1, 28, 28, 3]),
     grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].shape"),
    ("fp32 at the wrong size", request([1, 30, 30, 1], "FP32"),
     grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].shape"),
    ("raw bytes shorter than the shape", request([2, 28, 28], raw=b"\0" * 100),
     grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents[0]"),
    ("raw bytes longer than the shape", request([1, 28, 28], raw=b"\0" * 5000),
     grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents[0]"),
    ("empty batch", request([0, 28, 28]), grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
    ("zero-width image", request([1, 28, 0]), grpc.StatusCode.INVALID_ARGUMENT,
     "inputs[0].shape"),
    ("batch above max_batch_size", request([65, 28, 28]), grpc.StatusCode.INVALID_ARGUMENT,
     "max_batch_size"),
    ("wrong input name", request([1, 28, 28], name="pixels"), grpc.StatusCode.INVALID_ARGUMENT,
     "'image'"),
    ("NaN in FP32", request([1, 28, 28, 1], "FP32",
                            raw=np.full((1, 28, 28, 1), np.nan, np.float32).tobytes()),
     grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    # Declared sizes no payload backs: refused before anything is allocated for them.
    ("huge zero-size shape", request([0, 2**40, 2**40], raw=b""),
     grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].shape"),
    # BYTES is refused by its declared datatype before its data is decoded at all.
    ("huge BYTES shape", request([2**40], "BYTES", raw=b""), grpc.StatusCode.INVALID_ARGUMENT,
     "inputs[0].datatype: BYTES is not accepted"),
    ("large BYTES payload", request([200_000], "BYTES", raw=b"\0\0\0\0" * 200_000),
     grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].datatype: BYTES is not accepted"),
    ("batch above max_batch_size, before decoding", request([100_000, 28, 28], raw=b""),
     grpc.StatusCode.INVALID_ARGUMENT, "batch of 100000 exceeds max_batch_size"),
    ("unknown model", request([1, 28, 28], model="resnet"), grpc.StatusCode.NOT_FOUND,
     "model_name"),
    ("unknown version", request([1, 28, 28], version="9"), grpc.StatusCode.NOT_FOUND,
     "model_version"),
]


@pytest.mark.parametrize("case,req,code,text", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_refused_and_node_survives(stub, case, req, code, text):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=10)
    assert err.value.code() == code, err.value.details()
    assert text in err.value.details()
    still_serving(stub)


def test_no_inputs_and_mismatched_raw_count(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(oip_pb2.ModelInferRequest(model_name=EDGE), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    req = request([1, 28, 28])
    req.raw_input_contents.append(b"extra")
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in err.value.details()
    still_serving(stub)


def test_unknown_requested_output(stub):
    req = request([1, 28, 28])
    req.outputs.add(name="logits")
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outputs[0].name" in err.value.details()
    still_serving(stub)


def test_an_output_requested_twice_is_refused(stub):
    req = request([1, 28, 28])
    req.outputs.add(name="label")
    req.outputs.add(name="label")
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outputs[1].name" in err.value.details() and "twice" in err.value.details()
    still_serving(stub)


def test_unknown_model_metadata_and_config(stub):
    for call, req in ((stub.ModelMetadata, oip_pb2.ModelMetadataRequest(name="nope")),
                      (stub.ModelConfig, oip_pb2.ModelConfigRequest(name="nope"))):
        with pytest.raises(grpc.RpcError) as err:
            call(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nope" in err.value.details()
    still_serving(stub)


def test_oversized_message_is_resource_exhausted(start, shipped_repository):
    small = start(shipped_repository, "--max-message-bytes", "65536", name="small-msg")
    channel = grpc.insecure_channel(small.address)
    stub = InferenceStub(channel)
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request([1, 512, 512]), timeout=10)  # 256 KiB of pixels
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        still_serving(stub)
    finally:
        channel.close()
