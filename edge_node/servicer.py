"""Open Inference Protocol servicer of the edge node: decode -> engine -> encode.

With server.py and clients.py, the only edge_node modules that touch generated code.
Domain exceptions become status codes through ``edgeshard.rpc``'s one table; anything
unexpected becomes INTERNAL with a generic message (the traceback goes to the log).
"""

from __future__ import annotations

import logging
import threading

from edge_node import errors
from edge_node.engine import InferenceEngine
from edge_node.pipeline import OUTPUT_NAMES
from edge_node.repository import ModelVersion
from edge_node.stats import Duration
from edgeshard import VERSION
from edgeshard.rpc import guarded, time_left
from protos import codec, oip_pb2, parameters
from protos import model_config_pb2 as mc
from protos.oip_service import InferenceServicer

log = logging.getLogger(__name__)


SERVER_NAME = "edgeshard-edge-node"
EXTENSIONS = ["model_configuration", "statistics", "binary_tensor_data"]



_guard = guarded("node", log)


class NodeServicer(InferenceServicer):
    """The edge node's Open Inference Protocol servicer over one ``InferenceEngine``.

    ``node_id`` names this node in responses; ``ready`` is set once the node is warm and
    cleared when it drains.
    """

    def __init__(self, engine: InferenceEngine, node_id: str):
        self.engine = engine
        self.node_id = node_id
        self.ready = threading.Event()  # set once warm, cleared when draining

    @_guard
    def ServerLive(self, request, context):
        return oip_pb2.ServerLiveResponse(live=True)

    @_guard
    def ServerReady(self, request, context):
        return oip_pb2.ServerReadyResponse(ready=self.ready.is_set())

    @_guard
    def ModelReady(self, request, context):
        try:
            self.engine.repository.resolve(request.name, request.version)
        except (errors.ModelNotFoundError, errors.ModelUnavailableError):
            return oip_pb2.ModelReadyResponse(ready=False)
        return oip_pb2.ModelReadyResponse(ready=self.ready.is_set())

    @_guard
    def ServerMetadata(self, request, context):
        return oip_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=VERSION, extensions=EXTENSIONS
        )

    @_guard
    def ModelMetadata(self, request, context):
        mv = self.engine.repository.resolve(request.name, request.version)
        entry = self.engine.repository.models[mv.spec.name]
        spec = mv.spec
        tensor = oip_pb2.ModelMetadataResponse.TensorMetadata
        return oip_pb2.ModelMetadataResponse(
            name=spec.name,
            versions=sorted(entry.versions, key=int),
            platform="tflite",
            inputs=[tensor(name=spec.input_name, datatype="UINT8",
                           shape=[-1, spec.height, spec.width, spec.channels])],
            outputs=[
                tensor(name="probabilities", datatype="FP32", shape=[-1, mv.num_classes]),
                tensor(name="label", datatype="INT64", shape=[-1]),
                tensor(name="confidence", datatype="FP32", shape=[-1]),
            ],
        )

    @_guard
    def ModelConfig(self, request, context):
        mv = self.engine.repository.resolve(request.name, request.version)
        return oip_pb2.ModelConfigResponse(config=self._model_config(mv))

    def _model_config(self, mv: ModelVersion) -> mc.ModelConfig:
        spec = mv.spec
        scalar = mc.ModelTensorReshape(shape=[])
        cfg = self.engine.config
        return mc.ModelConfig(
            name=spec.name,
            platform="tflite",
            backend="tflite",
            max_batch_size=spec.max_batch_size,
            input=[mc.ModelInput(
                name=spec.input_name, data_type=mc.TYPE_UINT8, format=mc.ModelInput.FORMAT_NHWC,
                dims=[spec.height, spec.width, spec.channels],
            )],
            output=[
                mc.ModelOutput(name="probabilities", data_type=mc.TYPE_FP32,
                               dims=[mv.num_classes]),
                mc.ModelOutput(name="label", data_type=mc.TYPE_INT64, dims=[1], reshape=scalar),
                mc.ModelOutput(name="confidence", data_type=mc.TYPE_FP32, dims=[1],
                               reshape=scalar),
            ],
            instance_group=[mc.ModelInstanceGroup(
                name=spec.name, kind=mc.ModelInstanceGroup.KIND_CPU, count=cfg.workers,
            )],
            dynamic_batching=mc.ModelDynamicBatching(
                max_queue_delay_microseconds=int(cfg.max_batch_delay_ms * 1000),
            ),
            parameters={
                "labels": mc.ModelParameter(string_value=",".join(spec.labels)),
                "input_dtype": mc.ModelParameter(string_value=str(mv.input.dtype)),
                "temperature": mc.ModelParameter(string_value=repr(mv.temperature)),
                "sha256": mc.ModelParameter(string_value=mv.sha256),
                # the trusted key that verified this version's manifest ("": not verified)
                "signed_by": mc.ModelParameter(string_value=mv.signed_by),
            },
        )

    @_guard
    def ModelStatistics(self, request, context):
        response = oip_pb2.ModelStatisticsResponse()
        if request.name:
            self.engine.repository.resolve(request.name, request.version)
        for s in self.engine.stats.snapshot(request.name, request.version):
            ms = response.model_stats.add(
                name=s.name, version=s.version, last_inference=s.last_inference_ms,
                inference_count=s.inference_count, execution_count=s.execution_count,
            )
            ist = ms.inference_stats
            for key in ("success", "fail", "queue", "compute_input", "compute_infer",
                        "compute_output"):
                _duration(getattr(ist, key), getattr(s, key))
            for size, b in sorted(s.batches.items()):
                bs = ms.batch_stats.add(batch_size=size)
                _duration(bs.compute_input, b.compute_input)
                _duration(bs.compute_infer, b.compute_infer)
                _duration(bs.compute_output, b.compute_output)
        return response

    @_guard
    def ModelInfer(self, request, context):
        if not self.ready.is_set():
            raise errors.ShuttingDownError("node is not ready (starting or draining)")
        # Refuse what the request declares before decoding its data (a huge BYTES tensor
        # for an image model would otherwise be decoded in full first).
        self.engine.check_declared(
            request.model_name, request.model_version,
            [(codec.dtype_of(t.datatype) if t.datatype in codec.DATATYPES else None,
              tuple(t.shape)) for t in request.inputs])
        arrays = codec.decode_inputs(request)
        requested = codec.requested_outputs(request)
        if requested:
            for i, name in enumerate(requested):
                if name not in OUTPUT_NAMES:
                    raise errors.InvalidInputError(
                        f"outputs[{i}].name",
                        f"unknown output {name!r}; this model has {', '.join(OUTPUT_NAMES)}",
                    )
        result = self.engine.infer(
            request.model_name, request.model_version, arrays, timeout=time_left(context)
        )
        response = oip_pb2.ModelInferResponse(
            model_name=result.version.spec.name,
            model_version=result.version.version,
            id=request.id,
        )
        codec.encode_outputs(response, result.outputs.as_dict(), requested)
        parameters.set_param(response.parameters, "model_version", result.version.version)
        parameters.set_param(response.parameters, "node", self.node_id)
        parameters.set_param(response.parameters, "batch_size", result.request.timings.batch_size)
        return response


def _duration(target, source: Duration) -> None:
    target.count = source.count
    target.ns = source.ns
