"""Conversions between the coordinator's protobuf messages and its domain records.

Pure functions: a message or a record in, the other out. Nothing here makes a call.
"""

from __future__ import annotations

import json
import uuid

import numpy as np

from coordinator import errors
from coordinator.cascade.cloud import CloudTierStatus
from coordinator.cascade.decision import Decision
from coordinator.dataplane import OnlineAnswer
from coordinator.fleet.registry import NodeRecord
from coordinator.jobs.model import JobProgress, ResultRow
from coordinator.jobs.submission import JobRequest
from coordinator.monitoring.drift import Stats
from coordinator.monitoring.drift_watch import NodeDrift
from coordinator.monitoring.segments import SegmentError, check_segment
from protos import codec, fleet_pb2, oip_pb2, parameters

CLASSIFIER_OUTPUTS = ["probabilities", "label", "confidence"]
STATS_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer",
                   "compute_output")
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


# -- inference ---------------------------------------------------------------------------
def without_outputs(request: oip_pb2.ModelInferRequest) -> oip_pb2.ModelInferRequest:
    """A copy of ``request`` that asks for every output (the cascade needs them all)."""
    forwarded = oip_pb2.ModelInferRequest()
    forwarded.CopyFrom(request)
    del forwarded.outputs[:]
    return forwarded


def routing_key(request: oip_pb2.ModelInferRequest) -> str:
    """The request's ``routing_key`` parameter ("" when unset)."""
    return str(parameters.get_param(request.parameters, "routing_key", "") or "")


def segment(request: oip_pb2.ModelInferRequest) -> str:
    """The request's ``segment`` parameter ("" when unset); ``InvalidRequestError`` naming
    the parameter when it is not a short printable name (``coordinator.monitoring.segments``)."""
    try:
        return check_segment(parameters.get_param(request.parameters, "segment"))
    except SegmentError as exc:
        raise errors.InvalidRequestError(str(exc)) from None


def only_input(request: oip_pb2.ModelInferRequest) -> np.ndarray:
    """The request's one input tensor, decoded (``TensorError`` if it has another count)."""
    arrays = codec.decode_inputs(request)
    if len(arrays) != 1:
        raise codec.TensorError("inputs", f"expected exactly one input, got {len(arrays)}")
    (array,) = arrays.values()
    return array


def infer_response(answer: OnlineAnswer,
                   requested: list[str]) -> oip_pb2.ModelInferResponse:
    """The response to an online request: the node's own answer, with ``node``,
    ``retried`` and ``tier`` set; after the cascade, built from its decision."""
    response = answer.response
    if not response.parameters["node"].string_param:
        parameters.set_param(response.parameters, "node", answer.node.node_id)
    if answer.retried:
        parameters.set_param(response.parameters, "retried", True)
    if answer.decision is None:
        parameters.set_param(response.parameters, "tier", "edge")
        return response
    return cascade_response(response, answer.probabilities, answer.decision, requested)


def online_ids(request: oip_pb2.ModelInferRequest, n: int) -> list[str]:
    """Stable per-item ids for an online request of ``n`` items (the random policy
    hashes them): the request id (or a fresh one) and the item's index."""
    base = request.id or uuid.uuid4().hex
    return [f"{base}:{i}" for i in range(n)]


def cascade_response(response: oip_pb2.ModelInferResponse, probabilities: np.ndarray,
                     decision: Decision, requested: list[str]) -> oip_pb2.ModelInferResponse:
    """The answer to an online request after the cascade: the ``requested`` outputs (all
    classifier outputs when none) from ``decision``, the node's parameters, and ``tier``
    (``edge``, ``cloud`` or ``mixed``), ``escalated`` and ``degraded`` counts; for one
    item also the edge's (and cloud's) label and confidence."""
    d = decision
    out = oip_pb2.ModelInferResponse(model_name=response.model_name,
                                     model_version=response.model_version, id=response.id)
    for k, v in response.parameters.items():
        out.parameters[k].CopyFrom(v)
    n = len(probabilities)
    answered = int(d.cloud_answered.sum())
    tier = "edge" if not answered else "cloud" if answered == n else "mixed"
    parameters.set_param(out.parameters, "tier", tier)
    parameters.set_param(out.parameters, "escalated", int(d.escalated.sum()))
    parameters.set_param(out.parameters, "degraded", int(d.degraded.sum()))
    if n == 1:
        parameters.set_param(out.parameters, "edge_label", int(d.edge_labels[0]))
        parameters.set_param(out.parameters, "edge_confidence", float(d.edge_confidences[0]))
        if answered:
            parameters.set_param(out.parameters, "cloud_label", int(d.cloud_labels[0]))
            parameters.set_param(out.parameters, "cloud_confidence", float(d.cloud_confidences[0]))
    outputs = {"probabilities": probabilities, "label": d.labels, "confidence": d.confidences,
               "tier": np.array(d.tiers, dtype=object)}
    codec.encode_outputs(out, outputs, requested or CLASSIFIER_OUTPUTS)
    return out


def merge_statistics(responses) -> oip_pb2.ModelStatisticsResponse:
    """Triton statistics summed over nodes: counts and durations added per model version
    and batch size; ``last_inference`` is the latest."""
    merged: dict[tuple[str, str], oip_pb2.ModelStatistics] = {}
    for response in responses:
        for s in response.model_stats:
            _merge_one(merged, s)
    return oip_pb2.ModelStatisticsResponse(model_stats=[merged[k] for k in sorted(merged)])


def _merge_one(merged: dict, s: oip_pb2.ModelStatistics) -> None:
    key = (s.name, s.version)
    if key not in merged:
        merged[key] = oip_pb2.ModelStatistics()
        merged[key].CopyFrom(s)
        return
    m = merged[key]
    m.last_inference = max(m.last_inference, s.last_inference)
    m.inference_count += s.inference_count
    m.execution_count += s.execution_count
    for f in STATS_DURATIONS:
        _add(getattr(m.inference_stats, f), getattr(s.inference_stats, f))
    sizes = {b.batch_size: b for b in m.batch_stats}
    for b in s.batch_stats:
        if b.batch_size not in sizes:
            m.batch_stats.add().CopyFrom(b)
            continue
        for f in BATCH_DURATIONS:
            _add(getattr(sizes[b.batch_size], f), getattr(b, f))


def _add(total, part) -> None:
    total.count += part.count
    total.ns += part.ns


# -- fleet -------------------------------------------------------------------------------
def models(pb) -> dict[str, tuple[str, ...]]:
    """``ModelVersions`` messages as ``{model: versions}``."""
    return {m.name: tuple(m.versions) for m in pb}


def node_info(rec: NodeRecord, now: float) -> fleet_pb2.NodeInfo:
    """A registry record as ``NodeInfo``; ``now`` is the monotonic clock's reading."""
    return fleet_pb2.NodeInfo(
        node_id=rec.node_id, address=rec.address, state=rec.display_state, source=rec.source,
        models=[fleet_pb2.ModelVersions(name=n, versions=v) for n, v in sorted(rec.models.items())],
        load=fleet_pb2.NodeLoad(queue_depth=rec.queue_depth, in_flight=rec.in_flight,
                                ewma_latency_ms=rec.latency_ms or rec.node_latency_ms,
                                capacity=rec.capacity),
        weight=rec.weight,
        last_seen_s_ago=(now - rec.last_heard) if rec.last_heard else -1.0,
        epoch=rec.epoch, shards_done=rec.shards_done, items_done=rec.items_done,
        outstanding=rec.outstanding, processes=rec.processes,
    )


def cloud_info(status: CloudTierStatus | None) -> fleet_pb2.CloudTierInfo | None:
    """The cloud tier's status as ``CloudTierInfo`` (None: no cascade, field unset)."""
    if status is None:
        return None
    return fleet_pb2.CloudTierInfo(address=status.address, state=status.state,
                                   last_error=status.last_error,
                                   spooled_items=status.spooled_items)


# -- jobs --------------------------------------------------------------------------------
def job_request(header: fleet_pb2.JobHeader) -> JobRequest:
    """A Submit header as a ``JobRequest``."""
    return JobRequest(model=header.model, model_version=header.model_version,
                      shard_size=header.shard_size, total_items=header.total_items,
                      job_id=header.job_id, params=dict(header.params),
                      outputs=tuple(header.outputs))


def job_status(p: JobProgress, shares: dict[str, int]) -> fleet_pb2.JobStatus:
    """A job's progress (and results per node) as ``JobStatus``."""
    return fleet_pb2.JobStatus(
        job_id=p.job_id, model=p.model, state=p.state, total_items=p.total_items,
        done_items=p.done_items, shards_total=p.shards_total, shards_done=p.shards_done,
        shards_leased=p.shards_leased, created_at=p.created_at,
        finished_at=p.finished_at or 0.0, error=p.error or "",
        pending_escalations=p.pending_escalations, cloud_answered=p.cloud_answered,
        degraded=p.degraded, requeued_shards=p.requeued_shards,
        duplicates_discarded=p.duplicates,
        shares=[fleet_pb2.NodeShare(node=n, items=c) for n, c in sorted(shares.items())],
    )


def result_record(r: ResultRow, provisional: bool = False) -> fleet_pb2.ResultRecord:
    """A stored result as ``ResultRecord`` (``extra`` as JSON; label and confidence unset
    for a model that is not a classifier; each output as a ``ResultTensor``)."""
    outputs = []
    for name, array in r.outputs.items():
        datatype, shape, raw = codec.encode_array(array, f"outputs[{name!r}]")
        outputs.append(fleet_pb2.ResultTensor(name=name, datatype=datatype, shape=shape,
                                              raw=raw))
    return fleet_pb2.ResultRecord(
        seq=r.seq, id=r.item_id, label=r.label, confidence=r.confidence, tier=r.tier,
        node=r.node, model_version=r.model_version,
        extra_json=json.dumps(r.extra) if r.extra else "", provisional=provisional,
        outputs=outputs)


# -- drift -------------------------------------------------------------------------------
def drift_stats(msg: fleet_pb2.DriftStats) -> Stats:
    """Drift statistics (a reference profile or a node's window) from a heartbeat."""
    return Stats(msg.items, tuple(msg.count), tuple(msg.total), tuple(msg.total_sq),
                 tuple(msg.input_histogram), tuple(msg.confidence_histogram))


def node_drift(request: fleet_pb2.HeartbeatRequest) -> NodeDrift:
    """The drift references and windows a heartbeat carries."""
    return NodeDrift(
        {(r.model, r.version): drift_stats(r.reference) if r.HasField("reference") else None
         for r in request.drift_references},
        {(w.model, w.version, w.segment): drift_stats(w.window)
         for w in request.drift_windows})
