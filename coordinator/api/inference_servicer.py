"""The coordinator's Open Inference Protocol front: the whole fleet as one server.

Each RPC converts its request, calls the ``DataPlane`` (routing, retries, the cascade)
or asks the registry, and converts the answer. Metadata and config come from a live node
serving the model, whatever its load; statistics are summed over the live nodes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent import futures

from coordinator import errors
from coordinator.api import convert
from coordinator.api.canary import CanaryFront
from coordinator.api.clients import ClientPool, fleet_statistics, node_call
from coordinator.dataplane import DataPlane
from coordinator.fleet.registry import Registry
from edgeshard import VERSION, streaming
from edgeshard.rpc import guarded, time_left
from protos import codec, oip_pb2
from protos.oip_service import InferenceServicer as InferenceServicerBase

log = logging.getLogger(__name__)

guard = guarded("coordinator", log)
STATISTICS_TIMEOUT_S = 5.0
MAX_INFER_STREAMS = 64  # open ModelStreamInfer streams; more are RESOURCE_EXHAUSTED


class InferenceServicer(InferenceServicerBase):
    """``inference.GRPCInferenceService`` for the fleet. ``ready`` is set once the
    coordinator serves and cleared when it drains; ``request_timeout`` (seconds) is the
    deadline of a call whose client set none; ``canary`` routes and counts the requests
    of models with a rollout. ``ModelStreamInfer`` (for a grpc.aio server) runs the
    requests of at most ``MAX_INFER_STREAMS`` open streams on a pool of
    ``stream_workers`` threads; a stream holds no thread while it waits."""

    def __init__(self, registry: Registry, plane: DataPlane, clients: ClientPool,
                 request_timeout: float, canary: CanaryFront | None = None,
                 stream_workers: int = 32,
                 on_segment: Callable[[str, str, str, int, int], None] | None = None):
        self.registry = registry
        # (model, segment, outcome "ok"/"error", items, escalated) of each online request
        self.on_segment = on_segment
        self.plane = plane
        self.clients = clients
        self.request_timeout = request_timeout
        self.canary = canary
        self.ready = threading.Event()
        self.stream_pool = futures.ThreadPoolExecutor(stream_workers,
                                                      thread_name_prefix="coord-stream")
        self._streams = 0  # open ModelStreamInfer streams (counted on the event loop)

    # -- the RPCs, free of gRPC: the HTTP/REST binding calls these too -------------------
    # Each takes the RPC's request message and the seconds left of the caller's deadline
    # (None: none set, ``request_timeout`` applies) and returns the response message.
    def server_live(self, request, timeout=None) -> oip_pb2.ServerLiveResponse:
        """ServerLive: the process answers."""
        return oip_pb2.ServerLiveResponse(live=True)

    def server_ready(self, request, timeout=None) -> oip_pb2.ServerReadyResponse:
        """ServerReady: serving, not draining, and some node is routable."""
        ready = self.ready.is_set() and any(n.routable for n in self.registry.snapshot())
        return oip_pb2.ServerReadyResponse(ready=ready)

    def server_metadata(self, request, timeout=None) -> oip_pb2.ServerMetadataResponse:
        """ServerMetadata: name, version and the protocol extensions served."""
        return oip_pb2.ServerMetadataResponse(
            name="edgeshard-coordinator", version=VERSION,
            extensions=["model_configuration", "statistics", "binary_tensor_data",
                        "classification"],
        )

    def model_ready(self, request, timeout=None) -> oip_pb2.ModelReadyResponse:
        """ModelReady: some routable node serves the model (version)."""
        ready = self.ready.is_set() and bool(self.registry.routable(request.name, request.version))
        return oip_pb2.ModelReadyResponse(ready=ready)

    def _ask_a_node(self, method: str, request, timeout: float | None):
        node = self.plane.node_for(request.name, request.version)
        timeout = self.request_timeout if timeout is None else min(timeout, self.request_timeout)
        return node_call(self.clients, method, request)(node, timeout)

    def model_metadata(self, request, timeout=None) -> oip_pb2.ModelMetadataResponse:
        """ModelMetadata of a live node serving the model, whatever its load."""
        return self._ask_a_node("ModelMetadata", request, timeout)

    def model_config(self, request, timeout=None) -> oip_pb2.ModelConfigResponse:
        """ModelConfig of a live node serving the model, whatever its load."""
        return self._ask_a_node("ModelConfig", request, timeout)

    def model_statistics(self, request, timeout=None) -> oip_pb2.ModelStatisticsResponse:
        """ModelStatistics summed over the live nodes."""
        nodes = self.plane.live_nodes(request.name, request.version)
        timeout = STATISTICS_TIMEOUT_S if timeout is None else min(timeout, STATISTICS_TIMEOUT_S)
        return convert.merge_statistics(fleet_statistics(self.clients, nodes, request, timeout))

    def model_infer(self, request: oip_pb2.ModelInferRequest,
                    timeout: float | None = None) -> oip_pb2.ModelInferResponse:
        """ModelInfer through the data plane: routing, retries, the cascade."""
        if not self.ready.is_set():
            raise errors.ShuttingDownError("coordinator is not ready (starting or draining)")
        requested = codec.requested_outputs(request)
        segment = convert.segment(request)  # a bad segment name is refused before any work
        cascaded = self.plane.cascaded(request.model_name)

        def run(request: oip_pb2.ModelInferRequest):
            # The cascade needs every edge output (probabilities above all): ask for them all.
            forwarded = convert.without_outputs(request) if cascaded else request
            return self.plane.infer(
                request.model_name, request.model_version, convert.routing_key(request),
                self.request_timeout if timeout is None else timeout,
                node_call(self.clients, "ModelInfer", forwarded),
                probabilities_of=lambda response: codec.decode_output(response,
                                                                      "probabilities"),
                items=lambda: convert.only_input(forwarded),
                item_ids=lambda n: convert.online_ids(request, n), segment=segment,
                version_of=lambda response: response.model_version)

        try:
            answer = run(request) if self.canary is None else self.canary.infer(request, run)
        except Exception:
            if self.on_segment is not None:
                self.on_segment(request.model_name, segment, "error", 0, 0)
            raise
        if self.on_segment is not None:
            decision = answer.decision
            items = (len(decision.labels) if decision is not None
                     else _rows(answer.response))
            escalated = int(decision.escalated.sum()) if decision is not None else 0
            self.on_segment(request.model_name, segment, "ok", items, escalated)
        return convert.infer_response(answer, requested)

    # -- gRPC ------------------------------------------------------------------------------
    @guard
    def ServerLive(self, request, context):
        return self.server_live(request)

    @guard
    def ServerReady(self, request, context):
        return self.server_ready(request)

    @guard
    def ServerMetadata(self, request, context):
        return self.server_metadata(request)

    @guard
    def ModelReady(self, request, context):
        return self.model_ready(request)

    @guard
    def ModelMetadata(self, request, context):
        return self.model_metadata(request, time_left(context))

    @guard
    def ModelConfig(self, request, context):
        return self.model_config(request, time_left(context))

    @guard
    def ModelStatistics(self, request, context):
        return self.model_statistics(request, time_left(context))

    @guard
    def ModelInfer(self, request, context):
        return self.model_infer(request, time_left(context))

    @guard
    async def ModelStreamInfer(self, request_iterator, context):
        if self._streams >= MAX_INFER_STREAMS:
            raise errors.FleetSaturatedError(
                f"{MAX_INFER_STREAMS} ModelStreamInfer streams are open, the most the "
                "coordinator serves at once; close one, or use ModelInfer")
        self._streams += 1
        loop = asyncio.get_running_loop()

        def run_blocking(fn, *args):
            return loop.run_in_executor(self.stream_pool, fn, *args)

        try:
            async for response in streaming.serve_stream_async(
                    request_iterator, lambda r: self.model_infer(r, time_left(context)),
                    run_blocking, "coordinator", log):
                yield response
        finally:
            self._streams -= 1

    def close(self) -> None:
        """Stop the stream pool (after the gRPC server stopped)."""
        self.stream_pool.shutdown(wait=False, cancel_futures=True)


def _rows(response: oip_pb2.ModelInferResponse) -> int:
    """Items in a node's answer: the first output's batch dimension (1 without one)."""
    for output in response.outputs:
        return int(output.shape[0]) if output.shape else 1
    return 1
