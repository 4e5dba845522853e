"""The OIP service on the stock method paths, called by tritonclient and by our stub."""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tritonclient.utils import InferenceServerException

from protos import codec, oip_pb2, oip_service, parameters, reflection


class EchoServicer:
    """Live, and ModelInfer returns each input as OUTPUT<i>. Nothing else."""

    def ServerLive(self, request, context):
        return oip_pb2.ServerLiveResponse(live=True)

    def ModelInfer(self, request, context):
        try:
            inputs = codec.decode_inputs(request)
            outputs = {f"OUTPUT{i}": array for i, array in enumerate(inputs.values())}
            response = oip_pb2.ModelInferResponse(
                model_name=request.model_name, model_version="1", id=request.id
            )
            parameters.set_param(response.parameters, "echoed", len(outputs))
            codec.encode_outputs(response, outputs, [o.name for o in request.outputs])
        except codec.TensorError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return response

    def ModelStreamInfer(self, request_iterator, context):
        for request in request_iterator:
            response = self.ModelInfer(request, context)
            yield oip_pb2.ModelStreamInferResponse(infer_response=response)


class DefaultsServicer(oip_service.InferenceServicer):
    """Inherits every RPC from the base: all UNIMPLEMENTED except ServerReady."""

    def ServerReady(self, request, context):
        return oip_pb2.ServerReadyResponse(ready=True)


def start(servicer, with_extras: bool = False):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    oip_service.add_inference_servicer_to_server(servicer, server)
    if with_extras:
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        reflection.enable_reflection(server, extra_service_names=["example.Extra"])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def echo_server():
    server, address = start(EchoServicer(), with_extras=True)
    yield address
    server.stop(0)


@pytest.fixture
def channel(echo_server):
    with grpc.insecure_channel(echo_server) as ch:
        yield ch


@pytest.fixture
def triton(echo_server):
    client = tc.InferenceServerClient(url=echo_server)
    yield client
    client.close()


def test_service_name_is_the_stock_one():
    assert oip_service.SERVICE_NAME == "inference.GRPCInferenceService"
    assert oip_service.METHOD_NAMES == (
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    )  # fmt: skip


def test_tritonclient_server_live(triton):
    assert triton.is_server_live() is True


def test_tritonclient_infer_int8(triton):
    data = np.arange(-6, 6, dtype=np.int8).reshape(2, 6)
    image = tc.InferInput("INPUT0", list(data.shape), "INT8")
    image.set_data_from_numpy(data)
    result = triton.infer("echo", [image], request_id="r1", client_timeout=5)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    assert result.as_numpy("OUTPUT0").dtype == np.int8
    response = result.get_response()
    assert response.id == "r1"
    assert response.parameters["echoed"].int64_param == 1


def test_tritonclient_infer_bytes_and_requested_outputs(triton):
    a = tc.InferInput("A", [2], "BYTES")
    a.set_data_from_numpy(np.array([b"x", b"yz"], dtype=object))
    b = tc.InferInput("B", [1], "FP32")
    b.set_data_from_numpy(np.array([1.5], np.float32))
    result = triton.infer(
        "echo", [a, b], outputs=[tc.InferRequestedOutput("OUTPUT1")], client_timeout=5
    )
    assert result.as_numpy("OUTPUT1").tolist() == [1.5]
    assert result.as_numpy("OUTPUT0") is None
    result = triton.infer("echo", [a], client_timeout=5)
    assert result.as_numpy("OUTPUT0").tolist() == [b"x", b"yz"]


def test_tritonclient_sees_invalid_argument(triton):
    bad = tc.InferInput("INPUT0", [2], "INT8")
    bad.set_data_from_numpy(np.zeros(2, np.int8))
    bad.set_shape([3])  # now two bytes for three elements
    with pytest.raises(InferenceServerException) as info:
        triton.infer("echo", [bad], client_timeout=5)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "raw_input_contents[0]" in info.value.message()


def test_tritonclient_unimplemented(triton):
    with pytest.raises(InferenceServerException) as info:
        triton.get_model_config("echo", client_timeout=5)
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"


def test_our_stub(channel):
    stub = oip_service.InferenceStub(channel)
    assert stub.ServerLive(oip_pb2.ServerLiveRequest(), timeout=5).live is True
    request = oip_pb2.ModelInferRequest(model_name="echo")
    tensor, raw = codec.encode_input_tensor("x", np.array([[1, 2, 3]], np.int8))
    request.inputs.append(tensor)
    request.raw_input_contents.append(raw)
    response = stub.ModelInfer(request, timeout=5)
    assert codec.decode_output(response, "OUTPUT0").tolist() == [[1, 2, 3]]
    assert parameters.get_param(response.parameters, "echoed") == 1


def test_our_stub_stream(channel):
    stub = oip_service.InferenceStub(channel)
    requests = []
    for value in range(3):
        request = oip_pb2.ModelInferRequest(model_name="echo", id=str(value))
        tensor, raw = codec.encode_input_tensor("x", np.array([value], np.int32))
        request.inputs.append(tensor)
        request.raw_input_contents.append(raw)
        requests.append(request)
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=5))
    assert [r.infer_response.id for r in responses] == ["0", "1", "2"]
    assert [codec.decode_output(r.infer_response, "OUTPUT0")[0] for r in responses] == [0, 1, 2]


@pytest.mark.parametrize("method", ["ServerReady", "ModelMetadata", "ModelStatistics"])
def test_methods_the_servicer_lacks_are_unimplemented(channel, method):
    stub = oip_service.InferenceStub(channel)
    request_type = next(m.request for m in oip_service.METHODS if m.name == method)
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request_type(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_base_servicer_defaults_are_unimplemented():
    server, address = start(DefaultsServicer())
    try:
        with grpc.insecure_channel(address) as ch:
            stub = oip_service.InferenceStub(ch)
            assert stub.ServerReady(oip_pb2.ServerReadyRequest(), timeout=5).ready is True
            for name in ("ServerLive", "ModelInfer", "ModelConfig"):
                request_type = next(m.request for m in oip_service.METHODS if m.name == name)
                with pytest.raises(grpc.RpcError) as info:
                    getattr(stub, name)(request_type(), timeout=5)
                assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, name
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ModelStreamInfer(iter([oip_pb2.ModelInferRequest()]), timeout=5))
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(0)


def test_health_is_served_next_to_inference(channel):
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


# --- reflection ---------------------------------------------------------------------------------


def test_reflection_lists_and_resolves_the_stock_service(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert services == {
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "example.Extra",
    }
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName("inference.GRPCInferenceService")
    infer = service.methods_by_name["ModelInfer"]
    assert infer.input_type.full_name == "inference.ModelInferRequest"
    assert infer.output_type.full_name == "inference.ModelInferResponse"
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming
    config = service.methods_by_name["ModelConfig"].output_type
    assert config.fields_by_name["config"].message_type.full_name == "inference.ModelConfig"
    assert config.file.name == "inference/oip.proto"
    health_service = pool.FindServiceByName("grpc.health.v1.Health")
    assert health_service.methods_by_name["Check"].input_type.name == "HealthCheckRequest"


def test_reflection_schema_decodes_our_bytes(channel):
    # A generic client builds messages from the reflected schema: our
    # serialized request must parse as the reflected inference.ModelInferRequest.
    from google.protobuf import message_factory

    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    reflected = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("inference.ModelInferRequest")
    )
    ours = oip_pb2.ModelInferRequest(model_name="m", id="7")
    parameters.set_param(ours.parameters, "p", 3)
    parsed = reflected.FromString(ours.SerializeToString())
    assert parsed.model_name == "m"
    assert parsed.parameters["p"].int64_param == 3


def test_reflection_never_touches_the_default_pool():
    server, _ = start(EchoServicer(), with_extras=True)
    server.stop(0)
    default = descriptor_pool.Default()
    with pytest.raises(KeyError):
        default.FindFileByName("inference/oip.proto")
    # tritonclient's own inference.* is the only one in the default pool.
    assert default.FindMessageTypeByName("inference.ModelInferRequest").file.name == (
        "grpc_service.proto"
    )


def test_reflection_pool_serves_extra_files():
    from google.protobuf import empty_pb2, struct_pb2

    pool = reflection.build_reflection_pool([struct_pb2.DESCRIPTOR, empty_pb2.DESCRIPTOR])
    assert pool.FindMessageTypeByName("google.protobuf.Struct").name == "Struct"
    assert pool.FindMessageTypeByName("google.protobuf.Empty").name == "Empty"
    assert pool.FindMessageTypeByName("inference.InferParameter").file.package == "inference"
