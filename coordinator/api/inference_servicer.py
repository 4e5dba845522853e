"""The coordinator's Open Inference Protocol front: the whole fleet as one server.

ModelInfer is forwarded as-is to the node the router picks, with the caller's deadline,
through ``fleet.forwarder.Forwarder`` (admission, one retry elsewhere on UNAVAILABLE or
DEADLINE_EXCEEDED, every other status passed back unchanged); with a cascade rule for
the model, ``cascade.decision.Cascade`` then decides per item. Metadata, config and
readiness come from a live node serving the model; statistics are summed over the live
nodes.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc

from coordinator import errors
from coordinator.api import convert
from coordinator.api.clients import ClientPool, NodeCall, node_call
from coordinator.cascade.decision import Cascade
from coordinator.fleet.forwarder import Forwarder
from coordinator.fleet.registry import Registry
from edgeshard import VERSION
from edgeshard.errors import PeerStatusError
from edgeshard.rpc import guarded, time_left
from protos import codec, oip_pb2, parameters
from protos.oip_service import InferenceServicer as InferenceServicerBase

log = logging.getLogger(__name__)

guard = guarded("coordinator", log)
STATISTICS_TIMEOUT_S = 5.0


class InferenceServicer(InferenceServicerBase):
    """``inference.GRPCInferenceService`` for the fleet. ``ready`` is set once the
    coordinator serves and cleared when it drains."""

    def __init__(self, registry: Registry, forwarder: Forwarder, clients: ClientPool,
                 request_timeout: float, cascade: Cascade | None = None):
        self.registry = registry
        self.forwarder = forwarder
        self.clients = clients
        self.request_timeout = request_timeout
        self.ready = threading.Event()
        self.cascade = cascade

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

    def _ask_a_node(self, call: str, request, context):
        node = self.forwarder.router.any_node(request.name, request.version)
        timeout = min(time_left(context, self.request_timeout), self.request_timeout)
        return node_call(self.clients, call, request)(node, timeout)

    @guard
    def ModelMetadata(self, request, context):
        return self._ask_a_node("ModelMetadata", request, context)

    @guard
    def ModelConfig(self, request, context):
        return self._ask_a_node("ModelConfig", request, context)

    @guard
    def ModelStatistics(self, request, context):
        nodes = [n for n in self.registry.snapshot() if n.routable]
        if request.name and not any(n.serves(request.name, request.version) for n in nodes):
            raise errors.ModelNotServedError(f"model_name: no live node serves {request.name}")
        timeout = min(time_left(context, STATISTICS_TIMEOUT_S), STATISTICS_TIMEOUT_S)
        answers = []
        for node in nodes:
            try:
                answers.append(self.clients.get(node.address).stub.ModelStatistics(
                    request, timeout=timeout))
            except grpc.RpcError:
                continue  # a node that cannot answer contributes nothing this time
        return convert.merge_statistics(answers)

    # -- inference -------------------------------------------------------------------------
    @guard
    def ModelInfer(self, request, context):
        if not self.ready.is_set():
            raise errors.ShuttingDownError("coordinator is not ready (starting or draining)")
        requested = codec.requested_outputs(request)
        rule = self.cascade.rule(request.model_name) if self.cascade is not None else None
        forwarded = convert.without_outputs(request) if rule is not None else request
        timeout = time_left(context, self.request_timeout)
        deadline = time.monotonic() + timeout
        key = str(parameters.get_param(request.parameters, "routing_key", "") or "")
        call: NodeCall = node_call(self.clients, "ModelInfer", forwarded)
        done = self.forwarder.forward(request.model_name, request.model_version, key,
                                      timeout, call)
        response = done.answer
        if not response.parameters["node"].string_param:
            parameters.set_param(response.parameters, "node", done.node.node_id)
        if done.retried:
            parameters.set_param(response.parameters, "retried", True)
        if rule is None:
            parameters.set_param(response.parameters, "tier", "edge")
            return response
        probabilities = codec.decode_output(response, "probabilities")
        (items,) = codec.decode_inputs(forwarded).values()
        decision = self.cascade.decide(rule, items, probabilities,
                                       convert.online_ids(request, len(probabilities)),
                                       max(0.001, deadline - time.monotonic()))
        if decision.refusal is not None:  # the caller's input, refused by the cloud model
            raise PeerStatusError(decision.refusal.status,
                                  f"cloud tier refused the escalated items: "
                                  f"{decision.refusal.details}")
        return convert.cascade_response(response, probabilities, decision, requested)
