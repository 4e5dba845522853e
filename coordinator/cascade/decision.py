"""Edge first, cloud for the hard cases: apply the escalation policy and the cloud tier.

``Cascade.decide`` takes the edge's probabilities for a batch, decides per item with the
model's policy, asks the cloud tier for the escalated items and returns a ``Decision``:
per item the answer, the edge's label and confidence, the cloud's where it answered, and
the tier that gave the answer. Items the cloud did not answer are ``degraded``: the
online front returns their edge answer flagged so; the job path spools them
(``coordinator.jobs.runner``). Items the cloud refused as malformed are ``cloud_refused``:
the online front returns the refusal to its caller, the job path finalizes their edge
answer instead of spooling what would be refused again.

Edge/cloud agreement: the escalated items the cloud answered are reported to
``on_compared`` as a ``Comparison`` (source ``escalated``); with an ``Auditor``, the
accepted items its sampler picks are offered to it (source ``audit``), without waiting and
without changing the decision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from coordinator.cascade.audit import Auditor, AuditSampler, AuditTask, Comparison
from coordinator.cascade.cloud import CloudTier
from coordinator.cascade.rules import CascadeRule
from edgeshard.errors import PeerStatusError

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """The cascade's answer for a batch, item by item."""

    labels: np.ndarray  # the answer: the cloud's where it answered, else the edge's
    confidences: np.ndarray
    edge_labels: np.ndarray
    edge_confidences: np.ndarray
    tiers: list[str]
    escalated: np.ndarray  # bool: the policy sent the item to the cloud
    cloud_answered: np.ndarray  # bool
    cloud_labels: np.ndarray
    cloud_confidences: np.ndarray
    # bool [N]: escalated items the cloud refused as malformed (retrying cannot help)
    cloud_refused: np.ndarray | None = None
    refusal: PeerStatusError | None = None  # the cloud's status for them

    def __post_init__(self) -> None:
        if self.cloud_refused is None:
            self.cloud_refused = np.zeros(len(self.labels), dtype=bool)

    @property
    def degraded(self) -> np.ndarray:
        """Bool ``[N]``: escalated items the cloud did not answer (their answer is the edge's)."""
        return self.escalated & ~self.cloud_answered


class Cascade:
    """Applies each cascaded model's escalation policy and asks the cloud tier.

    ``rules`` maps an edge model to its rule; ``on_decision(model, outcome, items)`` is told
    how many items were accepted at the edge, answered or left unanswered by the cloud.
    ``on_compared(comparison)`` is given the edge and cloud answers of escalated items;
    ``auditor`` with ``sampler`` audits a share of the accepted ones (module docstring).
    """

    def __init__(self, rules: dict[str, CascadeRule], cloud: CloudTier,
                 on_decision: Callable[[str, str, int], None] | None = None,
                 on_compared: Callable[[Comparison], None] | None = None,
                 auditor: Auditor | None = None, sampler: AuditSampler | None = None):
        self.rules = rules
        self.cloud = cloud
        self.on_decision = on_decision  # metrics hook: (model, outcome, items)
        self.on_compared = on_compared
        self.auditor = auditor
        self.sampler = sampler

    def rule(self, model: str) -> CascadeRule | None:
        """The cascade rule of ``model``, or ``None`` when it is not cascaded."""
        return self.rules.get(model)

    def decide(self, rule: CascadeRule, items: np.ndarray, probabilities: np.ndarray,
               ids: Sequence[str] | None, timeout: float, version: str = "",
               segment: str = "", job_id: str = "") -> Decision:
        """Apply the policy to the edge output and ask the cloud for the escalated items;
        ``version`` (the edge model's) and ``segment`` key the agreement of its items;
        ``job_id`` names the batch job of a shard's items ("" online) in its comparisons."""
        edge_labels = probabilities.argmax(axis=1).astype(np.int64)
        edge_conf = probabilities.max(axis=1).astype(np.float32)
        escalate = np.asarray(rule.policy.decide(probabilities, ids), dtype=bool)
        n = len(edge_labels)
        cloud_labels = np.full(n, -1, dtype=np.int64)
        cloud_conf = np.zeros(n, dtype=np.float32)
        answered = np.zeros(n, dtype=bool)
        refused = np.zeros(n, dtype=bool)
        refusal = None
        idx = np.flatnonzero(escalate)
        if len(idx):
            answer = self.cloud.ask(rule.cloud_model, items[idx], timeout)
            got = idx[:answer.answered]
            cloud_labels[got] = answer.labels
            cloud_conf[got] = answer.confidences
            answered[got] = True
            refused[idx[answer.answered:answer.answered + answer.refused]] = True
            refusal = answer.refusal
        labels = np.where(answered, cloud_labels, edge_labels)
        confidences = np.where(answered, cloud_conf, edge_conf).astype(np.float32)
        tiers = ["cloud" if a else "edge" for a in answered]
        counts = {"accepted": int(n - len(idx)), "answered": int(answered.sum()),
                  "unanswered": int(len(idx) - answered.sum())}
        if self.on_decision is not None:
            for outcome, count in counts.items():
                if count:
                    self.on_decision(rule.model, outcome, count)
        got = np.flatnonzero(answered)
        if len(got) and self.on_compared is not None:
            self.on_compared(Comparison(
                rule.model, version, segment, "escalated", _pick(ids, got, "escalated"),
                items[got], edge_labels[got], edge_conf[got], cloud_labels[got],
                cloud_conf[got], job_id))
        if self.auditor is not None and self.sampler is not None:
            audit = np.flatnonzero(self.sampler.select(rule.model, ids, ~escalate))
            if len(audit):
                self.auditor.offer(AuditTask(
                    rule.cloud_model, rule.model, version, segment, _pick(ids, audit, "audit"),
                    np.array(items[audit]), edge_labels[audit], edge_conf[audit], job_id))
        return Decision(labels, confidences, edge_labels, edge_conf, tiers, escalate, answered,
                        cloud_labels, cloud_conf, refused, refusal)


def _pick(ids: Sequence[str] | None, idx: np.ndarray, prefix: str) -> list[str]:
    """The ids at ``idx`` (positions named ``prefix-<k>`` when the items have none)."""
    if ids is None:
        return [f"{prefix}-{k}" for k in idx]
    return [str(ids[k]) for k in idx]
