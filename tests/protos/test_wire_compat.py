"""Our messages are byte-compatible with tritonclient's, in one process.

Importing tritonclient.grpc next to protos.oip_pb2 is itself the first check:
if we had declared proto package ``inference``, protobuf's default pool would
refuse the second definition at import time.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc  # noqa: F401  (imported first on purpose: no pool clash)
from google.protobuf import descriptor, json_format
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton

from protos import codec, model_config_pb2, oip_pb2, parameters

OUR_FILES = (oip_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR)
TRITON_POOL = triton.DESCRIPTOR.pool


def our_messages():
    def walk(message):
        yield message
        for nested in message.nested_types:
            yield from walk(nested)

    for file in OUR_FILES:
        for message in file.message_types_by_name.values():
            yield from walk(message)


def our_enums():
    for file in OUR_FILES:
        yield from file.enum_types_by_name.values()
    for message in our_messages():
        yield from message.enum_types


def triton_name(full_name: str) -> str:
    assert full_name.startswith("edgeshard.oip."), full_name
    return "inference." + full_name.removeprefix("edgeshard.oip.")


def test_our_package_is_not_inference():
    for file in OUR_FILES:
        assert file.package == "edgeshard.oip"
    assert triton.DESCRIPTOR.package == "inference"


@pytest.mark.parametrize("message", list(our_messages()), ids=lambda m: m.full_name)
def test_every_field_matches_triton(message):
    theirs = TRITON_POOL.FindMessageTypeByName(triton_name(message.full_name))
    assert message.GetOptions().map_entry == theirs.GetOptions().map_entry
    for field in message.fields:
        assert field.name in theirs.fields_by_name, f"{message.full_name}.{field.name}"
        other = theirs.fields_by_name[field.name]
        where = f"{message.full_name}.{field.name}"
        assert field.number == other.number, where
        assert field.type == other.type, where
        assert field.is_repeated == other.is_repeated, where
        if field.message_type is not None:
            assert triton_name(field.message_type.full_name) == other.message_type.full_name, where
        if field.enum_type is not None:
            assert triton_name(field.enum_type.full_name) == other.enum_type.full_name, where
        ours_oneof = field.containing_oneof.name if field.containing_oneof else None
        their_oneof = other.containing_oneof.name if other.containing_oneof else None
        assert ours_oneof == their_oneof, where
    # Triton's numbers we leave out must stay free (reserved) on our side.
    ours_numbers = {f.number for f in message.fields}
    for other in theirs.fields:
        if other.number not in ours_numbers:
            assert other.name not in message.fields_by_name


@pytest.mark.parametrize("enum", list(our_enums()), ids=lambda e: e.full_name)
def test_every_enum_matches_triton(enum):
    theirs = TRITON_POOL.FindEnumTypeByName(triton_name(enum.full_name))
    assert [(v.name, v.number) for v in enum.values] == [(v.name, v.number) for v in theirs.values]


def test_model_config_reserves_the_numbers_it_omits():
    # Compare the .proto declarations: a reserved range keeps each omitted
    # Triton field number from being reused with another meaning.
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto()
    model_config_pb2.DESCRIPTOR.CopyToProto(proto)
    by_name = {m.name: m for m in proto.message_type}
    for name in ("ModelConfig", "ModelInstanceGroup"):
        reserved = {n for r in by_name[name].reserved_range for n in range(r.start, r.end)}
        ours = {f.number for f in by_name[name].field}
        theirs = {f.number for f in TRITON_POOL.FindMessageTypeByName(f"inference.{name}").fields}
        assert theirs - ours <= reserved, name


def test_service_methods_match_triton():
    ours = oip_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert triton_name(method.input_type.full_name) == other.input_type.full_name
        assert triton_name(method.output_type.full_name) == other.output_type.full_name
        assert method.client_streaming == other.client_streaming
        assert method.server_streaming == other.server_streaming
    assert len(ours.methods) == 12


# --- byte-level round trips with all fields set ------------------------------------------------


def as_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def assert_round_trips(ours, their_cls):
    """ours -> bytes -> theirs -> bytes -> ours, equal at every step."""
    theirs = their_cls.FromString(ours.SerializeToString())
    # Equal dicts mean tritonclient understood every field we set (fields it
    # did not know would be kept as unknown fields and missing from its dict).
    assert as_dict(theirs) == as_dict(ours)
    assert theirs.SerializeToString(deterministic=True) == ours.SerializeToString(
        deterministic=True
    )
    back = type(ours).FromString(theirs.SerializeToString())
    assert back == ours
    return theirs


def set_all_params(params) -> None:
    parameters.set_param(params, "b", True)
    parameters.set_param(params, "i", -3)
    parameters.set_param(params, "s", "str")
    parameters.set_param(params, "d", 0.5)
    parameters.set_param(params, "u", 2**64 - 1)


def full_infer_request() -> oip_pb2.ModelInferRequest:
    request = oip_pb2.ModelInferRequest(model_name="mnist", model_version="2", id="req-1")
    set_all_params(request.parameters)
    tensor, raw = codec.encode_input_tensor("image", np.arange(6, dtype=np.int8).reshape(2, 3))
    set_all_params(tensor.parameters)
    request.inputs.append(tensor)
    request.raw_input_contents.append(raw)
    out = request.outputs.add(name="probs")
    set_all_params(out.parameters)
    return request


def test_model_infer_request_with_raw_contents():
    theirs = assert_round_trips(full_infer_request(), triton.ModelInferRequest)
    assert theirs.inputs[0].datatype == "INT8"
    assert theirs.parameters["u"].uint64_param == 2**64 - 1
    assert theirs.raw_input_contents[0] == bytes(range(6))


def test_model_infer_request_with_every_typed_contents_field():
    request = oip_pb2.ModelInferRequest(model_name="m")
    c = request.inputs.add(name="x", datatype="BYTES", shape=[1]).contents
    c.bool_contents.extend([True, False])
    c.int_contents.extend([-1, 2])
    c.int64_contents.extend([-(2**63)])
    c.uint_contents.extend([2**32 - 1])
    c.uint64_contents.extend([2**64 - 1])
    c.fp32_contents.extend([0.5])
    c.fp64_contents.extend([1e300])
    c.bytes_contents.extend([b"\x00\xff"])
    assert_round_trips(request, triton.ModelInferRequest)


def test_model_infer_response_and_stream_response():
    response = oip_pb2.ModelInferResponse(model_name="m", model_version="1", id="r")
    set_all_params(response.parameters)
    codec.encode_outputs(response, {"y": np.ones((1, 10), np.float32), "s": np.array([b"a"])})
    set_all_params(response.outputs[0].parameters)
    response.outputs.add(name="typed", datatype="FP64", shape=[1]).contents.fp64_contents.append(2)
    theirs = assert_round_trips(response, triton.ModelInferResponse)
    assert list(theirs.outputs[0].shape) == [1, 10]
    stream = oip_pb2.ModelStreamInferResponse(error_message="boom", infer_response=response)
    assert_round_trips(stream, triton.ModelStreamInferResponse)


def test_infer_parameter_each_choice():
    for field, value in [
        ("bool_param", True),
        ("int64_param", -(2**63)),
        ("string_param", "x"),
        ("double_param", -0.125),
        ("uint64_param", 2**64 - 1),
    ]:
        ours = oip_pb2.InferParameter(**{field: value})
        theirs = assert_round_trips(ours, triton.InferParameter)
        assert theirs.WhichOneof("parameter_choice") == field
        assert getattr(theirs, field) == value


def test_small_rpc_messages():
    assert_round_trips(oip_pb2.ServerLiveResponse(live=True), triton.ServerLiveResponse)
    assert_round_trips(oip_pb2.ServerReadyResponse(ready=True), triton.ServerReadyResponse)
    assert_round_trips(oip_pb2.ModelReadyRequest(name="m", version="1"), triton.ModelReadyRequest)
    assert_round_trips(oip_pb2.ModelReadyResponse(ready=True), triton.ModelReadyResponse)
    assert_round_trips(
        oip_pb2.ServerMetadataResponse(name="edgeshard", version="0.1", extensions=["a", "b"]),
        triton.ServerMetadataResponse,
    )
    for name in ("ModelMetadataRequest", "ModelConfigRequest", "ModelStatisticsRequest"):
        assert_round_trips(getattr(oip_pb2, name)(name="m", version="3"), getattr(triton, name))


def test_model_metadata_response():
    tm = oip_pb2.ModelMetadataResponse.TensorMetadata
    ours = oip_pb2.ModelMetadataResponse(
        name="mnist",
        versions=["1", "2"],
        platform="tflite",
        inputs=[tm(name="image", datatype="INT8", shape=[-1, 28, 28, 1])],
        outputs=[tm(name="probs", datatype="FP32", shape=[-1, 10])],
    )
    theirs = assert_round_trips(ours, triton.ModelMetadataResponse)
    assert list(theirs.inputs[0].shape) == [-1, 28, 28, 1]


def full_model_config() -> model_config_pb2.ModelConfig:
    mc = model_config_pb2
    config = mc.ModelConfig(
        name="mnist",
        platform="tflite",
        backend="edgeshard",
        runtime="ai_edge_litert",
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=2)),
        max_batch_size=8,
        input=[
            mc.ModelInput(
                name="image",
                data_type=mc.TYPE_INT8,
                format=mc.ModelInput.FORMAT_NHWC,
                dims=[28, 28, 1],
                reshape=mc.ModelTensorReshape(shape=[784]),
                is_shape_tensor=False,
                allow_ragged_batch=True,
                optional=True,
                is_non_linear_format_io=True,
            )
        ],
        output=[
            mc.ModelOutput(
                name="probs",
                data_type=mc.TYPE_BF16,
                dims=[10],
                reshape=mc.ModelTensorReshape(shape=[1, 10]),
                label_filename="labels.txt",
                is_shape_tensor=True,
                is_non_linear_format_io=True,
            )
        ],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=[4, 8],
            max_queue_delay_microseconds=500,
            preserve_ordering=True,
            priority_levels=2,
            default_priority_level=1,
            default_queue_policy=mc.ModelQueuePolicy(
                timeout_action=mc.ModelQueuePolicy.DELAY,
                default_timeout_microseconds=10,
                allow_timeout_override=True,
                max_queue_size=100,
            ),
        ),
        instance_group=[
            mc.ModelInstanceGroup(
                name="cpu",
                kind=mc.ModelInstanceGroup.KIND_CPU,
                count=2,
                gpus=[0],
                profile=["p"],
                passive=True,
                host_policy="numa0",
            )
        ],
        default_model_filename="model.tflite",
        cc_model_filenames={"8.6": "model_86.plan"},
        metric_tags={"tier": "edge"},
    )
    config.dynamic_batching.priority_queue_policy[1].max_queue_size = 5
    config.parameters["threads"].string_value = "2"
    return config


def test_model_config_response_parses_as_tritons():
    ours = oip_pb2.ModelConfigResponse(config=full_model_config())
    theirs = assert_round_trips(ours, triton.ModelConfigResponse)
    assert isinstance(theirs.config, triton_config.ModelConfig)
    assert theirs.config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert theirs.config.input[0].data_type == triton_config.TYPE_INT8
    assert theirs.config.output[0].data_type == triton_config.TYPE_BF16
    assert theirs.config.instance_group[0].kind == triton_config.ModelInstanceGroup.KIND_CPU
    assert theirs.config.parameters["threads"].string_value == "2"


def test_fields_triton_has_and_we_omit_survive_as_unknown_fields():
    theirs = triton.ModelConfigResponse()
    theirs.config.name = "seq"
    theirs.config.sequence_batching.max_sequence_idle_microseconds = 7
    theirs.config.optimization.priority = triton_config.ModelOptimizationPolicy.PRIORITY_MAX
    ours = oip_pb2.ModelConfigResponse.FromString(theirs.SerializeToString())
    assert ours.config.name == "seq"
    assert ours.config.WhichOneof("scheduling_choice") is None
    again = triton.ModelConfigResponse.FromString(ours.SerializeToString())
    assert again == theirs


def test_model_statistics_response():
    sd = oip_pb2.StatisticDuration
    stats = oip_pb2.ModelStatistics(
        name="mnist",
        version="1",
        last_inference=1_700_000_000_000,
        inference_count=10,
        execution_count=4,
        inference_stats=oip_pb2.InferStatistics(
            **{
                field: sd(count=i + 1, ns=1000 * (i + 1))
                for i, field in enumerate(
                    [
                        "success",
                        "fail",
                        "queue",
                        "compute_input",
                        "compute_infer",
                        "compute_output",
                        "cache_hit",
                        "cache_miss",
                    ]
                )
            }  # fmt: skip
        ),
        batch_stats=[
            oip_pb2.InferBatchStatistics(
                batch_size=4,
                compute_input=sd(count=1, ns=2),
                compute_infer=sd(count=3, ns=4),
                compute_output=sd(count=5, ns=6),
            )
        ],
        memory_usage=[oip_pb2.MemoryUsage(type="CPU", id=0, byte_size=1 << 20)],
    )
    stats.response_stats["0"].success.count = 9
    stats.response_stats["0"].empty_response.ns = 3
    ours = oip_pb2.ModelStatisticsResponse(model_stats=[stats])
    theirs = assert_round_trips(ours, triton.ModelStatisticsResponse)
    assert theirs.model_stats[0].inference_stats.cache_miss.ns == 8000


def test_descriptor_types_are_plain_messages():
    # Sanity for the walkers above: they do see nested and map-entry types.
    names = {m.full_name for m in our_messages()}
    assert "edgeshard.oip.ModelInferRequest.InferInputTensor.ParametersEntry" in names
    assert "edgeshard.oip.ModelConfig.ParametersEntry" in names
    assert isinstance(oip_pb2.ModelInferRequest.DESCRIPTOR, descriptor.Descriptor)


def test_import_order_does_not_matter():
    # This module imports tritonclient first; prove the other order in a fresh process.
    import subprocess
    import sys

    code = (
        "import protos.oip_pb2, protos.model_config_pb2, protos.reflection, protos.oip_service\n"
        "import tritonclient.grpc\n"
        "reflected = protos.reflection.build_reflection_pool()\n"
        "print(reflected.FindMessageTypeByName('inference.ModelConfig').file.name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "inference/model_config.proto"
