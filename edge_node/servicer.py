"""Open Inference Protocol servicer of the edge node: decode -> engine -> encode.

With server.py and clients.py, the only edge_node modules that touch generated code.
Domain exceptions become status codes through ``edgeshard.rpc``'s one table; anything
unexpected becomes INTERNAL with a generic message (the traceback goes to the log).
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures

from edge_node import errors, topk
from edge_node.control import RepositoryControl
from edge_node.drift import check_segment
from edge_node.engine import InferenceEngine
from edge_node.hotswap import ModelManager
from edge_node.repository import ModelVersion
from edge_node.stats import Duration
from edgeshard import VERSION, streaming
from edgeshard.rpc import guarded, time_left
from protos import codec, oip_pb2, parameters
from protos import model_config_pb2 as mc
from protos.oip_service import InferenceServicer

log = logging.getLogger(__name__)


SERVER_NAME = "edgeshard-edge-node"
EXTENSIONS = [
    "model_configuration", "statistics", "binary_tensor_data", "classification",
    "model_repository"]



_guard = guarded("node", log)


class NodeServicer(InferenceServicer):
    """The edge node's Open Inference Protocol servicer over one ``InferenceEngine``.

    ``node_id`` names this node in responses; ``ready`` is set once the node is warm and
    cleared when it drains; ``models`` serves Triton's repository extension (hot swap).
    ``ModelStreamInfer`` runs the requests of at most ``max_streams`` open streams on
    ``stream_pool`` (each stream also holds one gRPC handler thread while open).
    Repository loads and unloads go through ``control``, which applies them in every
    serving process of the node (``edge_node.control``).
    """

    def __init__(self, engine: InferenceEngine, node_id: str,
                 models: ModelManager | None = None,
                 stream_pool: futures.Executor | None = None, max_streams: int = 0,
                 control: RepositoryControl | None = None):
        self.engine = engine
        self.node_id = node_id
        self.models = models
        self.ready = threading.Event()  # set once warm, cleared when draining
        self.stream_pool = stream_pool
        self.max_streams = max_streams if stream_pool is not None else 0
        self._streams = threading.BoundedSemaphore(max(1, self.max_streams))
        self.control = control

    # -- the RPCs, free of gRPC: the HTTP/REST binding calls these too -------------------
    # Each takes the RPC's request message and the seconds left of the caller's deadline
    # (None: no deadline) and returns the response message or raises edge_node.errors.
    def server_live(self, request, timeout=None) -> oip_pb2.ServerLiveResponse:
        """ServerLive: the process answers."""
        return oip_pb2.ServerLiveResponse(live=True)

    def server_ready(self, request, timeout=None) -> oip_pb2.ServerReadyResponse:
        """ServerReady: warm and not draining."""
        return oip_pb2.ServerReadyResponse(ready=self.ready.is_set())

    def model_ready(self, request, timeout=None) -> oip_pb2.ModelReadyResponse:
        """ModelReady: the version is loaded and the node ready (unknown: not ready)."""
        try:
            self.engine.resolve(request.name, request.version)
        except (errors.ModelNotFoundError, errors.ModelUnavailableError):
            return oip_pb2.ModelReadyResponse(ready=False)
        return oip_pb2.ModelReadyResponse(ready=self.ready.is_set())

    def server_metadata(self, request, timeout=None) -> oip_pb2.ServerMetadataResponse:
        """ServerMetadata: name, version and the protocol extensions served."""
        return oip_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=VERSION, extensions=EXTENSIONS
        )

    def model_metadata(self, request, timeout=None) -> oip_pb2.ModelMetadataResponse:
        """ModelMetadata: the task's input and output tensors."""
        mv = self.engine.resolve(request.name, request.version)
        entry = self.engine.repository.models[mv.spec.name]
        tensor = oip_pb2.ModelMetadataResponse.TensorMetadata
        return oip_pb2.ModelMetadataResponse(
            name=mv.spec.name,
            versions=sorted(entry.versions, key=int),
            platform="tflite",
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape)
                    for t in mv.task.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape)
                     for t in mv.task.outputs],
        )

    def model_config(self, request, timeout=None) -> oip_pb2.ModelConfigResponse:
        """ModelConfig: Triton's model configuration of the version."""
        mv = self.engine.resolve(request.name, request.version)
        return oip_pb2.ModelConfigResponse(config=self._model_config(mv))

    def _model_config(self, mv: ModelVersion) -> mc.ModelConfig:
        """Triton's model configuration: dims without the batch dimension when batched
        (``max_batch_size`` > 0), the full shape with ``max_batch_size`` 0 otherwise."""
        spec, task = mv.spec, mv.task
        batched = mv.signature.batched
        cfg = self.engine.config
        delay_ms = (cfg.max_batch_delay_ms if spec.max_queue_delay_ms is None
                    else spec.max_queue_delay_ms)
        parameters = {
            "task": task.kind,
            "sha256": mv.sha256,
            # the trusted key that verified this version's manifest ("": not verified)
            "signed_by": mv.signed_by,
            # what runs the model: "cpu" (XNNPACK) or the external delegate's library
            "delegate": mv.runs_on,
            "delegate_fallback": mv.delegate_fallback,
            **task.parameters(),
        }
        return mc.ModelConfig(
            name=spec.name,
            platform="tflite",
            backend="tflite",
            max_batch_size=mv.max_batch_size if batched else 0,
            input=[mc.ModelInput(name=t.name, data_type=_data_type(t.datatype),
                                 format=getattr(mc.ModelInput, f"FORMAT_{t.layout}"),
                                 **_dims(t.shape, batched))
                   for t in task.inputs],
            output=[mc.ModelOutput(name=t.name, data_type=_data_type(t.datatype),
                                   **_dims(t.shape, batched))
                    for t in task.outputs],
            instance_group=[mc.ModelInstanceGroup(
                name=spec.name, kind=mc.ModelInstanceGroup.KIND_CPU, count=cfg.workers,
            )],
            dynamic_batching=mc.ModelDynamicBatching(
                max_queue_delay_microseconds=int(delay_ms * 1000)) if batched else None,
            parameters={k: mc.ModelParameter(string_value=v) for k, v in parameters.items()},
        )

    def model_statistics(self, request, timeout=None) -> oip_pb2.ModelStatisticsResponse:
        """ModelStatistics: Triton's per-version counters and durations."""
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

    def model_infer(self, request: oip_pb2.ModelInferRequest,
                    timeout: float | None = None) -> oip_pb2.ModelInferResponse:
        """ModelInfer: validate, run through the engine, apply ``classification``."""
        if not self.ready.is_set():
            raise errors.ShuttingDownError("node is not ready (starting or draining)")
        # Refuse what the request declares before decoding its data (a huge BYTES tensor
        # for an image model would otherwise be decoded in full first).
        self.engine.check_declared(
            request.model_name, request.model_version,
            [(t.name, codec.dtype_of(t.datatype) if t.datatype in codec.DATATYPES else None,
              tuple(t.shape)) for t in request.inputs])
        mv = self.engine.resolve(request.model_name, request.model_version)
        requested = codec.requested_outputs(request)
        names = [t.name for t in mv.task.outputs]
        class_counts = {}
        for i, output in enumerate(request.outputs):
            if output.name not in names:
                raise errors.InvalidInputError(
                    f"outputs[{i}].name",
                    f"unknown output {output.name!r}; {mv.spec.name} has {', '.join(names)}")
            k = parameters.get_param(output.parameters, topk.PARAMETER)
            if k is not None:
                if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                    raise errors.InvalidInputError(
                        f"outputs[{i}].parameters.{topk.PARAMETER}",
                        f"class count must be an integer >= 1, got {k!r}")
                class_counts[output.name] = k
        dequantize = parameters.get_param(request.parameters, "dequantize")
        if dequantize is not None and not isinstance(dequantize, bool):
            raise errors.InvalidInputError(
                "parameters.dequantize", f"must be a bool, got {dequantize!r}")
        segment = check_segment(parameters.get_param(request.parameters, "segment"))
        arrays = codec.decode_inputs(request)
        result = self.engine.infer(
            request.model_name, request.model_version, arrays, timeout=timeout,
            parameters={"dequantize": bool(dequantize), "segment": segment},
        )
        outputs = result.outputs
        for name, k in class_counts.items():
            outputs[name] = topk.top_k(outputs[name], k, mv.spec.labels,
                                       mv.signature.batched)
        response = oip_pb2.ModelInferResponse(
            model_name=result.version.spec.name,
            model_version=result.version.version,
            id=request.id,
        )
        codec.encode_outputs(response, outputs, requested)
        parameters.set_param(response.parameters, "model_version", result.version.version)
        parameters.set_param(response.parameters, "node", self.node_id)
        parameters.set_param(response.parameters, "batch_size", result.request.timings.batch_size)
        return response


    def repository_index(self, request, timeout=None) -> oip_pb2.RepositoryIndexResponse:
        """RepositoryIndex: every model version with its state (READY, UNLOADING,
        UNAVAILABLE and why)."""
        response = oip_pb2.RepositoryIndexResponse()
        for row in self._manager().index(ready_only=request.ready):
            response.models.add(name=row.name, version=row.version, state=row.state,
                                reason=row.reason)
        return response

    def repository_model_load(self, request,
                              timeout=None) -> oip_pb2.RepositoryModelLoadResponse:
        """RepositoryModelLoad: load what is new for the model (``force``: even when its
        inputs or outputs change); refused versions make it fail, naming each and why."""
        force = parameters.get_param(request.parameters, "force", False)
        if not isinstance(force, bool):
            raise errors.InvalidInputError("parameters.force", f"must be a bool, got {force!r}")
        if not request.model_name:
            raise errors.InvalidInputError("model_name", "empty: name the model to load")
        refused = self._control().load(request.model_name, force=force)
        entry = self.engine.repository.models.get(request.model_name)
        if refused or entry is None or entry.latest is None:
            serving = (f"version {entry.latest.version} still serves" if entry is not None
                       and entry.latest is not None else "no version serves")
            raise errors.ModelRefusedError(
                f"model_name: {request.model_name}: {serving}; refused: "
                + ("; ".join(refused) or "; ".join(entry.failures.values() if entry else [])))
        return oip_pb2.RepositoryModelLoadResponse()

    def repository_model_unload(self, request,
                                timeout=None) -> oip_pb2.RepositoryModelUnloadResponse:
        """RepositoryModelUnload: unload every version of the model until loaded again."""
        if not request.model_name:
            raise errors.InvalidInputError("model_name", "empty: name the model to unload")
        self._control().unload(request.model_name)
        return oip_pb2.RepositoryModelUnloadResponse()

    def _manager(self) -> ModelManager:
        if self.models is None:
            raise errors.ModelUnavailableError("the model repository is not managed here")
        return self.models

    def _control(self) -> RepositoryControl:
        if self.control is None:
            raise errors.ModelUnavailableError("the model repository is not managed here")
        return self.control

    # -- gRPC ------------------------------------------------------------------------------
    @_guard
    def ServerLive(self, request, context):
        return self.server_live(request)

    @_guard
    def ServerReady(self, request, context):
        return self.server_ready(request)

    @_guard
    def ModelReady(self, request, context):
        return self.model_ready(request)

    @_guard
    def ServerMetadata(self, request, context):
        return self.server_metadata(request)

    @_guard
    def ModelMetadata(self, request, context):
        return self.model_metadata(request)

    @_guard
    def ModelConfig(self, request, context):
        return self.model_config(request)

    @_guard
    def ModelStatistics(self, request, context):
        return self.model_statistics(request)

    @_guard
    def ModelInfer(self, request, context):
        return self.model_infer(request, time_left(context))

    @_guard
    def ModelStreamInfer(self, request_iterator, context):
        if self.max_streams == 0:
            raise errors.OverloadedError(
                "ModelStreamInfer is off on this node (--max-infer-streams 0); use ModelInfer")
        if not self._streams.acquire(blocking=False):
            raise errors.OverloadedError(
                f"{self.max_streams} ModelStreamInfer streams are open, the most this serving "
                "process takes at once (--max-infer-streams); close one, or use ModelInfer")
        try:
            yield from streaming.serve_stream(
                request_iterator, lambda r: self.model_infer(r, time_left(context)),
                self.stream_pool, context.is_active, "node", log)
        finally:
            self._streams.release()

    @_guard
    def RepositoryIndex(self, request, context):
        return self.repository_index(request)

    @_guard
    def RepositoryModelLoad(self, request, context):
        return self.repository_model_load(request)

    @_guard
    def RepositoryModelUnload(self, request, context):
        return self.repository_model_unload(request)


def _data_type(datatype: str) -> int:
    """The model-config enum of an OIP datatype (``BYTES`` is ``TYPE_STRING``)."""
    return mc.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def _dims(shape: tuple[int, ...], batched: bool) -> dict:
    """``dims`` (and a ``reshape`` for a scalar per item) of a tensor of ``shape``."""
    dims = list(shape[1:] if batched else shape)
    if not dims:  # a scalar per item: Triton wants dims [1] reshaped to []
        return {"dims": [1], "reshape": mc.ModelTensorReshape(shape=[])}
    return {"dims": dims}


def _duration(target, source: Duration) -> None:
    target.count = source.count
    target.ns = source.ns
