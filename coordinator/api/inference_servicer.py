"""The coordinator's Open Inference Protocol front: the whole fleet as one server.

Each RPC converts its request, calls the ``DataPlane`` (routing, retries, the cascade)
or asks the registry, and converts the answer. Metadata and config come from a live node
serving the model, whatever its load; statistics are summed over the live nodes.
"""

from __future__ import annotations

import logging
import threading

from coordinator import errors
from coordinator.api import convert
from coordinator.api.clients import ClientPool, fleet_statistics, node_call
from coordinator.dataplane import DataPlane
from coordinator.fleet.registry import Registry
from edgeshard import VERSION
from edgeshard.rpc import guarded, time_left
from protos import codec, oip_pb2
from protos.oip_service import InferenceServicer as InferenceServicerBase

log = logging.getLogger(__name__)

guard = guarded("coordinator", log)
STATISTICS_TIMEOUT_S = 5.0


class InferenceServicer(InferenceServicerBase):
    """``inference.GRPCInferenceService`` for the fleet. ``ready`` is set once the
    coordinator serves and cleared when it drains; ``request_timeout`` (seconds) is the
    deadline of a call whose client set none."""

    def __init__(self, registry: Registry, plane: DataPlane, clients: ClientPool,
                 request_timeout: float):
        self.registry = registry
        self.plane = plane
        self.clients = clients
        self.request_timeout = request_timeout
        self.ready = threading.Event()

    # -- health and metadata ---------------------------------------------------------------
    @guard
    def ServerLive(self, request, context):
        return oip_pb2.ServerLiveResponse(live=True)

    @guard
    def ServerReady(self, request, context):
        ready = self.ready.is_set() and any(n.routable for n in self.registry.snapshot())
        return oip_pb2.ServerReadyResponse(ready=ready)

    @guard
    def ServerMetadata(self, request, context):
        return oip_pb2.ServerMetadataResponse(
            name="edgeshard-coordinator", version=VERSION,
            extensions=["model_configuration", "statistics", "binary_tensor_data"],
        )

    @guard
    def ModelReady(self, request, context):
        ready = self.ready.is_set() and bool(self.registry.routable(request.name, request.version))
        return oip_pb2.ModelReadyResponse(ready=ready)

    def _ask_a_node(self, method: str, request, context):
        node = self.plane.node_for(request.name, request.version)
        timeout = min(time_left(context, self.request_timeout), self.request_timeout)
        return node_call(self.clients, method, request)(node, timeout)

    @guard
    def ModelMetadata(self, request, context):
        return self._ask_a_node("ModelMetadata", request, context)

    @guard
    def ModelConfig(self, request, context):
        return self._ask_a_node("ModelConfig", request, context)

    @guard
    def ModelStatistics(self, request, context):
        nodes = self.plane.live_nodes(request.name, request.version)
        timeout = min(time_left(context, STATISTICS_TIMEOUT_S), STATISTICS_TIMEOUT_S)
        return convert.merge_statistics(fleet_statistics(self.clients, nodes, request, timeout))

    # -- inference -------------------------------------------------------------------------
    @guard
    def ModelInfer(self, request, context):
        if not self.ready.is_set():
            raise errors.ShuttingDownError("coordinator is not ready (starting or draining)")
        requested = codec.requested_outputs(request)
        # The cascade needs every edge output (probabilities above all): ask for them all.
        forwarded = (convert.without_outputs(request)
                     if self.plane.cascaded(request.model_name) else request)
        answer = self.plane.infer(
            request.model_name, request.model_version, convert.routing_key(request),
            time_left(context, self.request_timeout),
            node_call(self.clients, "ModelInfer", forwarded),
            probabilities_of=lambda response: codec.decode_output(response, "probabilities"),
            items=lambda: convert.only_input(forwarded),
            item_ids=lambda n: convert.online_ids(request, n))
        return convert.infer_response(answer, requested)
