"""Edge first, cloud for the hard cases: apply the escalation policy and the cloud tier.

``Cascade.decide`` takes the edge's probabilities for a batch, decides per item with the
model's policy, asks the cloud tier for the escalated items and returns a ``Decision``:
per item the answer, the edge's label and confidence, the cloud's where it answered, and
the tier that gave the answer. Items the cloud did not answer are ``degraded``: the
online front returns their edge answer flagged so; the job path spools them
(``coordinator.jobs.runner``). Items the cloud refused as malformed are ``cloud_refused``:
the online front returns the refusal to its caller, the job path finalizes their edge
answer instead of spooling what would be refused again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

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
    """

    def __init__(self, rules: dict[str, CascadeRule], cloud: CloudTier,
                 on_decision: Callable[[str, str, int], None] | None = None):
        self.rules = rules
        self.cloud = cloud
        self.on_decision = on_decision  # metrics hook: (model, outcome, items)

    def rule(self, model: str) -> CascadeRule | None:
        """The cascade rule of ``model``, or ``None`` when it is not cascaded."""
        return self.rules.get(model)

    def decide(self, rule: CascadeRule, items: np.ndarray, probabilities: np.ndarray,
               ids: Sequence[str] | None, timeout: float) -> Decision:
        """Apply the policy to the edge output and ask the cloud for the escalated items."""
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
        return Decision(labels, confidences, edge_labels, edge_conf, tiers, escalate, answered,
                        cloud_labels, cloud_conf, refused, refusal)
