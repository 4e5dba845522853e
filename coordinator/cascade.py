"""Edge first, cloud for the hard cases: apply the escalation policy and the cloud tier.

``Cascade.answer`` takes the edge's probabilities for a batch, decides per item with the
model's policy, asks the cloud tier for the escalated items and returns final results
plus the escalations the cloud did not answer (for the spool). Every result carries the
edge's label and confidence, and the cloud's when it answered; ``tier`` says which one
gave the answer. ``Drainer`` replays the spool when the cloud is available again and
expires entries past their TTL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from coordinator.cascade_rules import CascadeRule
from coordinator.cloud import CloudTier
from coordinator.jobs import ResultRow
from coordinator.spool import Escalation
from coordinator.spoolqueue import SpoolQueue

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

    @property
    def degraded(self) -> np.ndarray:
        return self.escalated & ~self.cloud_answered


class Cascade:
    def __init__(self, rules: dict[str, CascadeRule], cloud: CloudTier,
                 on_decision: Callable[[str, str, int], None] | None = None):
        self.rules = rules
        self.cloud = cloud
        self.on_decision = on_decision  # metrics hook: (model, outcome, items)

    def rule(self, model: str) -> CascadeRule | None:
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
        idx = np.flatnonzero(escalate)
        if len(idx):
            answer = self.cloud.ask(rule.cloud_model, items[idx], timeout)
            got = idx[:answer.answered]
            cloud_labels[got] = answer.labels
            cloud_conf[got] = answer.confidences
            answered[got] = True
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
                        cloud_labels, cloud_conf)

    def job_results(self, rule: CascadeRule, ids: Sequence[str], items: np.ndarray,
                    probabilities: np.ndarray, node: str, version: str,
                    timeout: float) -> tuple[list[ResultRow], list[Escalation]]:
        """Final results for a shard, and the escalations the cloud left for the spool."""
        d = self.decide(rule, items, probabilities, ids, timeout)
        results, pending = [], []
        for i, item in enumerate(ids):
            extra = {"edge_label": int(d.edge_labels[i]),
                     "edge_confidence": float(d.edge_confidences[i]),
                     "escalated": bool(d.escalated[i]), "degraded": False}
            if d.cloud_answered[i]:
                extra.update(cloud_label=int(d.cloud_labels[i]),
                             cloud_confidence=float(d.cloud_confidences[i]))
            row = ResultRow(item, int(d.labels[i]), float(d.confidences[i]), d.tiers[i], node,
                            version, extra)
            if d.escalated[i] and not d.cloud_answered[i]:
                pending.append(Escalation(item, items[i], row))
            else:
                results.append(row)
        return results, pending


class Drainer:
    """Replays spooled escalations when the cloud is available; expires old ones.

    One thread. Each round: finalize expired entries (degraded edge answers), then take up
    to ``max_batch`` oldest entries per cloud model and ask the cloud (an open breaker or
    a spent budget answers at once, without a call). Answered entries get their final
    cloud result in the same transaction that removes them; unanswered ones stay, with the
    error noted.
    """

    def __init__(self, queue: SpoolQueue, cascade: Cascade, timeout: float,
                 interval: float = 0.2, on_change: Callable[[], None] | None = None):
        self.queue = queue
        self.cascade = cascade
        self.timeout = timeout
        self.interval = interval
        self.on_change = on_change  # e.g. wake job watchers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-drainer", daemon=True)
        self.drained = 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(self.timeout + 2)

    def run_once(self, now: float | None = None) -> int:
        """One round; returns how many entries got their cloud answer."""
        now = time.time() if now is None else now
        self.queue.expire(now)
        entries = self.queue.take(self.cascade.cloud.max_batch * 4, now)
        by_model = defaultdict(list)
        for e in entries:
            by_model[e.model].append(e)
        resolved = 0
        for model, group in by_model.items():
            rule = self.cascade.rule(model)
            if rule is None:
                continue  # no cascade for it any more: the TTL will finalize the edge answer
            group = group[:self.cascade.cloud.max_batch]
            answer = self.cascade.cloud.ask(rule.cloud_model, np.stack([e.data for e in group]),
                                            self.timeout)
            done = []
            for e, label, conf in zip(group, answer.labels, answer.confidences, strict=False):
                extra = {**e.fallback.extra, "cloud_label": int(label),
                         "cloud_confidence": float(conf), "degraded": False, "spooled": True}
                done.append((e.spool_id, ResultRow(e.item_id, int(label), float(conf), "cloud",
                                                   e.fallback.node, e.fallback.model_version,
                                                   extra)))
            if done:
                resolved += self.queue.resolve(done)
            if answer.reason:
                self.queue.failed([e.spool_id for e in group[answer.answered:]], answer.reason)
        self.drained += resolved
        if resolved and self.on_change is not None:
            self.on_change()
        return resolved

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                resolved = self.run_once()
            except Exception:  # noqa: BLE001 - keep draining
                log.exception("spool drain round failed")
                resolved = 0
            if not resolved:
                self._stop.wait(self.interval)
