"""Run one leased shard on its node, and turn the answers into the shard's results.

A shard is one batched request to the node that leased it, with a deadline
(``ShardRunner``). For a classification model the results are each item's label and
confidence (plus any outputs the job asked for); for any other task (``tensor``,
``detection``...) the job's requested outputs, every output when it named none
(``tensor_output``). Without a cascade rule for the model every item's edge answer
is final. With one, the cascade decides per item; items the cloud answered get the
cloud's answer (``tier`` = ``cloud``), items it could not answer become escalations for
the spool, carrying the edge answer to fall back on (``shard_results``); items it refused
as malformed keep their edge answer, final, flagged ``degraded`` with the cloud's error.

Failure behaviour: the node's error status propagates as ``PeerStatusError`` (the
dispatcher decides whether the node or the shard is at fault).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from coordinator.cascade.decision import Cascade, Decision
from coordinator.errors import InvalidResultError
from coordinator.fleet.catalog import CLASSIFICATION
from coordinator.fleet.forwarder import Forwarder
from coordinator.fleet.registry import NodeRecord
from coordinator.jobs.model import Lease, ResultBatch, ResultRow
from coordinator.jobs.spool import Escalation
from edgeshard.errors import PeerStatusError


@dataclass(frozen=True)
class Classification:
    """A batch of answers from one classification server.

    ``label`` int64 [N], ``confidence`` float32 [N], ``probabilities`` float32 [N, K]
    when they were asked for (else None); ``node`` is the id the server reported ("" if
    none).
    """

    label: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray | None
    model_version: str
    node: str


# classify(node, model, items, version, with_probabilities, timeout_s) -> Classification;
# raises edgeshard.errors.PeerStatusError when the node answers with an error status.
Classify = Callable[[NodeRecord, str, np.ndarray, str, bool, float], Classification]


@dataclass(frozen=True)
class TensorAnswer:
    """A batch of answers from one server: output arrays by name, each ``[N, ...]``; the
    model version and the node id the server reported ("" if none)."""

    outputs: dict[str, np.ndarray]
    model_version: str
    node: str


# infer(node, model, items, version, outputs, timeout_s) -> TensorAnswer (every output when
# ``outputs`` is empty); raises edgeshard.errors.PeerStatusError like Classify.
InferTensors = Callable[[NodeRecord, str, np.ndarray, str, list[str], float], TensorAnswer]

# Lease params set at Submit (coordinator.jobs.service): the model's task and the outputs
# the job keeps (a JSON list). Jobs stored before they existed are classification jobs.
TASK_PARAM = "task"
OUTPUTS_PARAM = "outputs"
SEGMENT_PARAM = "segment"  # a job's items' segment (e.g. a camera id), for agreement
CLASSIFIER_OUTPUTS = ("label", "confidence")


def job_outputs(params: Mapping[str, Any]) -> list[str]:
    """The output names a job keeps, from its lease params (empty: the task's default)."""
    raw = params.get(OUTPUTS_PARAM)
    return list(json.loads(raw)) if raw else []


class VersionLabels(Protocol):
    """The rollouts' side of the job path (``coordinator.rollout.controller.Rollouts``):
    which version a shard of a job that pins ``pinned`` ("" for none) runs on a node
    (``serves(version)``), and what came of it. A route is opaque here."""

    def shard_route(self, model: str, pinned: str,  # noqa: D102
                    serves: Callable[[str], bool]) -> Any: ...

    def answered(self, model: str, route: Any, seconds: float,  # noqa: D102
                 confidences: Any = (), items: int = 0, escalated: int = 0) -> None: ...

    def failed(self, model: str, route: Any) -> None: ...  # noqa: D102


@dataclass(frozen=True)
class ShardOutput:
    """What running a shard produced: final results (a batch, or rows), and escalations
    for the spool."""

    results: ResultBatch | list[ResultRow]
    escalations: list[Escalation] = field(default_factory=list)


def _edge_confidences(out: ShardOutput) -> tuple[list[float], int]:
    """The edge's top-1 confidences of a shard's final results and how many items the
    cascade escalated (spooled ones included)."""
    batches = [out.results] if isinstance(out.results, ResultBatch) else []
    confidences: list[float] = []
    escalated = len(out.escalations)
    for batch in batches:
        if batch.extras:
            confidences.extend(float(e.get("edge_confidence", 0.0)) for e in batch.extras)
            escalated += sum(bool(e.get("escalated")) for e in batch.extras)
        elif batch.confidences is not None:
            confidences.extend(np.asarray(batch.confidences, float).tolist())
    return confidences, escalated


def shard_results(decision: Decision, ids: Sequence[str], items: np.ndarray, node: str,
                  version: str) -> ShardOutput:
    """A shard's final results and spool escalations from the cascade's ``decision``.

    ``ids`` [N] and ``items`` [N, ...] are the shard's; every result records the edge's
    label and confidence (and the cloud's when it answered) in ``extra``.
    """
    d = decision
    final, extras, pending = [], [], []
    for i, item in enumerate(ids):
        extra = {"edge_label": int(d.edge_labels[i]),
                 "edge_confidence": float(d.edge_confidences[i]),
                 "escalated": bool(d.escalated[i]), "degraded": False}
        if d.cloud_answered[i]:
            extra.update(cloud_label=int(d.cloud_labels[i]),
                         cloud_confidence=float(d.cloud_confidences[i]))
        if d.cloud_refused[i]:  # final: the cloud would refuse it again
            extra.update(degraded=True, cloud_error=d.refusal.summary)
        if d.escalated[i] and not d.cloud_answered[i] and not d.cloud_refused[i]:
            pending.append(Escalation(item, items[i], ResultRow(
                item, int(d.labels[i]), float(d.confidences[i]), d.tiers[i], node, version,
                extra)))
        else:
            final.append(i)
            extras.append(extra)
    keep = np.asarray(final, np.int64)
    return ShardOutput(ResultBatch([ids[i] for i in final], np.asarray(d.labels)[keep],
                                   np.asarray(d.confidences)[keep], node, version,
                                   [d.tiers[i] for i in final], extras), pending)


class ShardRunner:
    """The dispatcher's ``run_shard``: one batched request per shard, then the cascade.

    ``deadline_s`` bounds the node's call; ``cloud_timeout_s`` the cloud's, for the
    escalated items of the shard.
    """

    def __init__(self, forwarder: Forwarder, classify: Classify, deadline_s: float,
                 cascade: Cascade | None = None, cloud_timeout_s: float = 5.0,
                 infer_tensors: InferTensors | None = None,
                 task_of: Callable[[str], str] = lambda model: CLASSIFICATION,
                 labels: VersionLabels | None = None):
        self.forwarder = forwarder
        self.labels = labels  # canary rollouts: the version of an unpinned job's shard
        self.classify = classify
        self.deadline_s = deadline_s
        self.cascade = cascade
        self.cloud_timeout_s = cloud_timeout_s
        self.infer_tensors = infer_tensors
        self.task_of = task_of  # a job submitted while no node could say: ask now

    def __call__(self, node: NodeRecord, lease: Lease) -> ShardOutput:
        """Run ``lease`` on ``node`` (at the version the rollout labels say, for a job
        that pins none); raises ``PeerStatusError`` from the node."""
        version = str(lease.params.get("model_version", ""))
        if self.labels is None:
            return self._run(node, lease, version)
        route = self.labels.shard_route(lease.model, version,
                                        lambda v: node.serves(lease.model, v))
        started = time.monotonic()
        try:
            out = self._run(node, lease, route.version)
        except PeerStatusError:
            self.labels.failed(lease.model, route)
            raise
        confidences, escalated = _edge_confidences(out)
        self.labels.answered(lease.model, route, time.monotonic() - started, confidences,
                             len(lease.ids), escalated)
        return out

    def _run(self, node: NodeRecord, lease: Lease, version: str) -> ShardOutput:
        task = str(lease.params.get(TASK_PARAM) or self.task_of(lease.model))
        wanted = job_outputs(lease.params)
        if task != CLASSIFICATION or wanted:
            return self._tensors(node, lease, version, task, wanted)
        rule = self.cascade.rule(lease.model) if self.cascade is not None else None

        def call(target: NodeRecord, timeout: float) -> Classification:
            return self.classify(target, lease.model, lease.array, version, rule is not None,
                                 timeout)

        out = self.forwarder.call(node, call, self.deadline_s, items=len(lease.ids),
                                  shard=True)
        node_name = out.node or node.node_id
        if rule is not None:
            decision = self.cascade.decide(rule, lease.array, out.probabilities, lease.ids,
                                           self.cloud_timeout_s, out.model_version,
                                           str(lease.params.get(SEGMENT_PARAM, "")),
                                           lease.job_id)
            return shard_results(decision, lease.ids, lease.array, node_name,
                                 out.model_version)
        return edge_output(lease.ids, out.label, out.confidence, node_name, out.model_version)

    def _tensors(self, node: NodeRecord, lease: Lease, version: str, task: str,
                 wanted: list[str]) -> ShardOutput:
        """The shard as one request for its outputs (Submit refused a cascaded model's job
        that names outputs, and any job of a cascaded model that is not a classifier)."""
        if self.infer_tensors is None:
            raise InvalidResultError(f"job of {lease.model} ({task}): this coordinator "
                                     "cannot run jobs of models that are not classifiers")
        ask = sorted({*CLASSIFIER_OUTPUTS, *wanted}) if task == CLASSIFICATION else wanted

        def call(target: NodeRecord, timeout: float) -> TensorAnswer:
            return self.infer_tensors(target, lease.model, lease.array, version, ask, timeout)

        out = self.forwarder.call(node, call, self.deadline_s, items=len(lease.ids),
                                  shard=True)
        return tensor_output(lease.ids, out, out.node or node.node_id, task, wanted)


def edge_output(ids: Sequence[str], labels: np.ndarray, confidences: np.ndarray, node: str,
                version: str) -> ShardOutput:
    """A shard's results when the edge's answers are final (no cascade rule).

    ``ids`` [N]; ``labels`` integer [N]; ``confidences`` float [N]; ``node`` answered with
    model ``version``.
    """
    return ShardOutput(ResultBatch(list(ids), labels, confidences, node, version))


def tensor_output(ids: Sequence[str], answer: TensorAnswer, node: str, task: str,
                  wanted: Sequence[str]) -> ShardOutput:
    """A shard's results from a node's tensors: ``wanted`` outputs (every output when
    empty), and for a classifier its label and confidence too. ``InvalidResultError`` when
    an output asked for is missing."""
    outputs = dict(answer.outputs)
    labels = confidences = None
    if task == CLASSIFICATION:
        missing = [n for n in CLASSIFIER_OUTPUTS if n not in outputs]
        if missing:
            raise InvalidResultError(f"results: the node's answer lacks {missing}")
        labels = outputs["label"].reshape(-1)
        confidences = outputs["confidence"].reshape(-1)
    if wanted:
        missing = [n for n in wanted if n not in outputs]
        if missing:
            raise InvalidResultError(f"results: the node's answer lacks outputs {missing}")
        outputs = {n: outputs[n] for n in wanted}
    return ShardOutput(ResultBatch(list(ids), labels, confidences, node, answer.model_version,
                                   outputs=outputs))
