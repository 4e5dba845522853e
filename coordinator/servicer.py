"""The coordinator's Open Inference Protocol front: the whole fleet as one server.

ModelInfer is forwarded as-is to the node the router picks, with the caller's deadline;
UNAVAILABLE or DEADLINE_EXCEEDED from that node is retried once on another node while
time remains; any other status (INVALID_ARGUMENT above all) goes back to the caller
unchanged and is never retried. Metadata, config and readiness come from a live node
serving the model; statistics are summed over the live nodes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import grpc
import numpy as np

from coordinator import errors
from coordinator.cascade import Cascade
from coordinator.cascade_rules import CascadeRule
from coordinator.clients import ClientPool
from coordinator.registry import Registry
from coordinator.router import Router
from edgeshard import VERSION
from edgeshard.rpc import guarded, time_left
from protos import codec, oip_pb2
from protos.oip_service import InferenceServicer

log = logging.getLogger(__name__)

STATUS = {
    errors.ModelNotServedError: grpc.StatusCode.NOT_FOUND,
    errors.UnknownNodeError: grpc.StatusCode.NOT_FOUND,
    errors.JobNotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.NoNodeAvailableError: grpc.StatusCode.UNAVAILABLE,
    errors.ShuttingDownError: grpc.StatusCode.UNAVAILABLE,
    errors.FleetSaturatedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.JobInputError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidJobError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.JobConflictError: grpc.StatusCode.ALREADY_EXISTS,
    codec.TensorError: grpc.StatusCode.INVALID_ARGUMENT,
}
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)



class NodeStatus(Exception):
    """A node's own error status, passed back to the caller unchanged."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.status_code = code  # edgeshard.rpc.status_for answers with it


guard = guarded(STATUS, "coordinator", log)


class Admission:
    """Coordinator-wide bound on concurrent online requests (refuse, never queue)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.current = 0
        self._lock = threading.Lock()

    def __enter__(self):
        with self._lock:
            if self.current >= self.limit:
                raise errors.FleetSaturatedError(
                    f"coordinator at its limit of {self.limit} requests in flight; retry later"
                )
            self.current += 1
        return self

    def __exit__(self, *exc):
        with self._lock:
            self.current -= 1


class FrontServicer(InferenceServicer):
    def __init__(self, registry: Registry, router: Router, clients: ClientPool,
                 request_timeout: float, max_in_flight: int, on_result=None,
                 cascade: Cascade | None = None):
        self.registry = registry
        self.router = router
        self.clients = clients
        self.request_timeout = request_timeout
        self.admission = Admission(max_in_flight)
        self.ready = threading.Event()
        self.on_result = on_result  # metrics hook: (node_id, code_name, seconds)
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

    def _ask_a_node(self, name: str, version: str, call: str, request, context):
        node = self.router.choose(name, version)
        remaining = time_left(context, self.request_timeout)
        stub = self.clients.get(node.address).stub
        try:
            return getattr(stub, call)(request, timeout=min(remaining, self.request_timeout))
        except grpc.RpcError as exc:
            raise NodeStatus(exc.code(), exc.details() or f"node {node.node_id} failed") from None

    @guard
    def ModelMetadata(self, request, context):
        return self._ask_a_node(request.name, request.version, "ModelMetadata", request, context)

    @guard
    def ModelConfig(self, request, context):
        return self._ask_a_node(request.name, request.version, "ModelConfig", request, context)

    @guard
    def ModelStatistics(self, request, context):
        merged: dict[tuple[str, str], oip_pb2.ModelStatistics] = {}
        nodes = [n for n in self.registry.snapshot() if n.routable]
        if request.name and not any(n.serves(request.name, request.version) for n in nodes):
            raise errors.ModelNotServedError(f"model_name: no live node serves {request.name}")
        for node in nodes:
            try:
                response = self.clients.get(node.address).stub.ModelStatistics(
                    request, timeout=min(time_left(context, 5.0), 5.0))
            except grpc.RpcError:
                continue  # a node that cannot answer contributes nothing this time
            for s in response.model_stats:
                _merge_stats(merged, s)
        return oip_pb2.ModelStatisticsResponse(
            model_stats=[merged[k] for k in sorted(merged)])

    # -- inference -------------------------------------------------------------------------
    @guard
    def ModelInfer(self, request, context):
        if not self.ready.is_set():
            raise errors.ShuttingDownError("coordinator is not ready (starting or draining)")
        key = str(codec.get_param(request.parameters, "routing_key", "") or "")
        timeout = time_left(context, self.request_timeout)
        deadline = time.monotonic() + timeout
        tried: set[str] = set()
        rule = self.cascade.rule(request.model_name) if self.cascade is not None else None
        requested = [o.name for o in request.outputs]
        if rule is not None:  # the cascade needs every edge output, probabilities above all
            forwarded = oip_pb2.ModelInferRequest()
            forwarded.CopyFrom(request)
            del forwarded.outputs[:]
            request = forwarded
        with self.admission:
            for attempt in range(2):
                node = self.router.choose(request.model_name, request.model_version, key,
                                          frozenset(tried))
                remaining = deadline - time.monotonic()
                self.registry.acquire(node.address)
                started = time.monotonic()
                try:
                    response = self.clients.get(node.address).stub.ModelInfer(
                        request, timeout=remaining)
                except grpc.RpcError as exc:
                    self.registry.release(node.address, None)
                    self._observe(node.node_id, exc.code().name, started)
                    retry = (exc.code() in RETRYABLE and attempt == 0
                             and deadline - time.monotonic() > 0.005)
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        self.registry.probe_failed(node.address)
                    if retry:
                        log.info("retrying on another node: %s answered %s",
                                 node.node_id, exc.code().name)
                        tried.add(node.address)
                        continue
                    raise NodeStatus(exc.code(),
                                     exc.details() or f"node {node.node_id} failed") from None
                elapsed = time.monotonic() - started
                self.registry.release(node.address, elapsed)
                self._observe(node.node_id, "OK", started)
                if not response.parameters["node"].string_param:
                    codec.set_param(response.parameters, "node", node.node_id)
                if attempt:
                    codec.set_param(response.parameters, "retried", True)
                if rule is not None:
                    return self._cascade(rule, request, response, requested, deadline)
                codec.set_param(response.parameters, "tier", "edge")
                return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _cascade(self, rule: CascadeRule, request, response, requested: list[str],
                 deadline: float):
        """Escalate the items the policy is unsure of; answer with the tier that decided.

        Escalated items the cloud cannot answer in time keep the edge answer, flagged
        ``degraded`` (online answers are not spooled: the caller already has one).
        """
        probs = codec.decode_output(response, "probabilities")
        (items,) = codec.decode_inputs(request).values()
        d = self.cascade.decide(rule, items, probs, _online_ids(request, len(probs)),
                                max(0.001, deadline - time.monotonic()))
        out = oip_pb2.ModelInferResponse(model_name=response.model_name,
                                         model_version=response.model_version, id=response.id)
        for k, v in response.parameters.items():
            out.parameters[k].CopyFrom(v)
        answered = int(d.cloud_answered.sum())
        tier = "edge" if not answered else "cloud" if answered == len(probs) else "mixed"
        codec.set_param(out.parameters, "tier", tier)
        codec.set_param(out.parameters, "escalated", int(d.escalated.sum()))
        codec.set_param(out.parameters, "degraded", int(d.degraded.sum()))
        if len(probs) == 1:
            codec.set_param(out.parameters, "edge_label", int(d.edge_labels[0]))
            codec.set_param(out.parameters, "edge_confidence", float(d.edge_confidences[0]))
            if answered:
                codec.set_param(out.parameters, "cloud_label", int(d.cloud_labels[0]))
                codec.set_param(out.parameters, "cloud_confidence",
                                float(d.cloud_confidences[0]))
        outputs = {"probabilities": probs, "label": d.labels, "confidence": d.confidences,
                   "tier": np.array(d.tiers, dtype=object)}
        codec.encode_outputs(out, outputs, requested or ["probabilities", "label",
                                                          "confidence"])
        return out

    def _observe(self, node_id: str, code: str, started: float) -> None:
        if self.on_result is not None:
            self.on_result(node_id, code, time.monotonic() - started)


def _merge_stats(merged: dict, s) -> None:
    key = (s.name, s.version)
    if key not in merged:
        merged[key] = oip_pb2.ModelStatistics()
        merged[key].CopyFrom(s)
        return
    m = merged[key]
    m.last_inference = max(m.last_inference, s.last_inference)
    m.inference_count += s.inference_count
    m.execution_count += s.execution_count
    for f in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        a, b = getattr(m.inference_stats, f), getattr(s.inference_stats, f)
        a.count += b.count
        a.ns += b.ns
    sizes = {b.batch_size: b for b in m.batch_stats}
    for b in s.batch_stats:
        if b.batch_size not in sizes:
            m.batch_stats.add().CopyFrom(b)
            continue
        t = sizes[b.batch_size]
        for f in ("compute_input", "compute_infer", "compute_output"):
            x, y = getattr(t, f), getattr(b, f)
            x.count += y.count
            x.ns += y.ns


def _online_ids(request, n: int) -> list[str]:
    """Stable per-item ids for online requests (the random policy hashes them)."""
    base = request.id or uuid.uuid4().hex
    return [f"{base}:{i}" for i in range(n)]
