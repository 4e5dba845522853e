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
from coordinator.api.aio_clients import AioNodeChannels, node_call_async
from coordinator.api.canary import CanaryFront
from coordinator.api.clients import ClientPool, fleet_statistics, node_call
from coordinator.dataplane import DataPlane, OnlineAnswer
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
    of models with a rollout.

    On a grpc.aio server (``channels`` given), ``ModelInfer`` of a model without a cascade
    rule or a running rollout is routed, forwarded and answered on the event loop; the
    rest (the cascade's cloud calls, rollout counting, waiting for room in a full fleet)
    and the requests of at most ``MAX_INFER_STREAMS`` open ``ModelStreamInfer`` streams run
    on a pool of ``blocking_workers`` threads; a stream holds no thread while it waits."""

    def __init__(self, registry: Registry, plane: DataPlane, clients: ClientPool,
                 request_timeout: float, canary: CanaryFront | None = None,
                 blocking_workers: int = 64,
                 on_segment: Callable[[str, str, str, int, int], None] | None = None,
                 channels: AioNodeChannels | None = None):
        self.registry = registry
        # (model, segment, outcome "ok"/"error", items, escalated) of each online request
        self.on_segment = on_segment
        self.plane = plane
        self.clients = clients
        self.request_timeout = request_timeout
        self.canary = canary
        self.ready = threading.Event()
        self.channels = channels
        self.blocking_pool = futures.ThreadPoolExecutor(blocking_workers,
                                                        thread_name_prefix="coord-front")
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
            self._count_segment(request.model_name, segment, None)
            raise
        self._count_segment(request.model_name, segment, answer)
        return convert.infer_response(answer, requested)

    async def model_infer_async(self, request: oip_pb2.ModelInferRequest,
                                timeout: float | None = None) -> oip_pb2.ModelInferResponse:
        """``model_infer`` for a coroutine on the server's event loop: the node's answer
        is final for a model without a cascade rule or a running rollout, and such a
        request holds no thread (waiting for room in a full fleet excepted); any other
        request runs ``model_infer`` on the blocking pool."""
        loop = asyncio.get_running_loop()

        def run_blocking(fn, *args):
            return loop.run_in_executor(self.blocking_pool, fn, *args)

        if not self.ready.is_set():
            raise errors.ShuttingDownError("coordinator is not ready (starting or draining)")
        model = request.model_name
        if (self.channels is None or self.plane.cascaded(model)
                or (self.canary is not None and not self.canary.unrouted(request))):
            return await run_blocking(self.model_infer, request, timeout)
        requested = codec.requested_outputs(request)
        segment = convert.segment(request)
        try:
            answer = await self.plane.infer_async(
                model, request.model_version, convert.routing_key(request),
                self.request_timeout if timeout is None else timeout,
                node_call_async(self.channels, "ModelInfer", request), run_blocking)
        except Exception:
            self._count_segment(model, segment, None)
            raise
        self._count_segment(model, segment, answer)
        return convert.infer_response(answer, requested)

    def _count_segment(self, model: str, segment: str, answer: OnlineAnswer | None) -> None:
        """Tell ``on_segment`` one online request's outcome (None: it failed)."""
        if self.on_segment is None:
            return
        if answer is None:
            self.on_segment(model, segment, "error", 0, 0)
            return
        decision = answer.decision
        items = len(decision.labels) if decision is not None else _rows(answer.response)
        escalated = int(decision.escalated.sum()) if decision is not None else 0
        self.on_segment(model, segment, "ok", items, escalated)

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
    async def ModelInfer(self, request, context):
        return await self.model_infer_async(request, time_left(context))

    @guard
    async def ModelStreamInfer(self, request_iterator, context):
        if self._streams >= MAX_INFER_STREAMS:
            raise errors.FleetSaturatedError(
                f"{MAX_INFER_STREAMS} ModelStreamInfer streams are open, the most the "
                "coordinator serves at once; close one, or use ModelInfer")
        self._streams += 1
        loop = asyncio.get_running_loop()

        def run_blocking(fn, *args):
            return loop.run_in_executor(self.blocking_pool, fn, *args)

        try:
            async for response in streaming.serve_stream_async(
                    request_iterator, lambda r: self.model_infer(r, time_left(context)),
                    run_blocking, "coordinator", log):
                yield response
        finally:
            self._streams -= 1

    def close(self) -> None:
        """Stop the blocking pool (after the gRPC server stopped)."""
        self.blocking_pool.shutdown(wait=False, cancel_futures=True)


def _rows(response: oip_pb2.ModelInferResponse) -> int:
    """Items in a node's answer: the first output's batch dimension (1 without one)."""
    for output in response.outputs:
        return int(output.shape[0]) if output.shape else 1
    return 1
