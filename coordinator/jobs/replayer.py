"""Replay the spool to the cloud tier when it is available again; expire old entries.

One thread. Each round: finalize expired entries (their degraded edge answers), then take
up to ``max_batch`` oldest entries per cloud model and ask the cloud (an open breaker or a
spent budget answers at once, without a call). Answered entries get their final cloud
result in the same transaction that removes them; entries the cloud refuses as malformed
get their edge answer as final (flagged ``degraded``, with the cloud's error); unanswered
ones stay, with the error noted. A round that fails is logged and the next one runs:
replay never stops on an error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from coordinator.cascade.audit import Comparison
from coordinator.cascade.decision import Cascade
from coordinator.errors import StoreFullError, StoreUnavailableError
from coordinator.jobs.model import ResultRow
from coordinator.jobs.spool_queue import SpoolQueue

log = logging.getLogger(__name__)


class SpoolReplayer:
    """Sends spooled escalations to the cloud; ``replayed`` counts the answered ones.

    ``timeout`` (seconds) bounds each cloud call; ``interval`` is the pause after a
    round that answered nothing; ``on_change`` is called after a round that wrote
    results (e.g. to wake job watchers).
    """

    def __init__(self, queue: SpoolQueue, cascade: Cascade, timeout: float,
                 interval: float = 0.2, on_change: Callable[[], None] | None = None):
        self.queue = queue
        self.cascade = cascade
        self.timeout = timeout
        self.interval = interval
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-replayer", daemon=True)
        self.replayed = 0

    def start(self) -> None:
        """Start the replay thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop after the current round (waits up to ``timeout`` + 2 s)."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(self.timeout + 2)

    def run_once(self, now: float | None = None) -> int:
        """One round at wall-clock ``now`` (seconds); returns how many entries got their
        cloud answer."""
        now = time.time() if now is None else now
        self.queue.expire(now)
        cloud = self.cascade.cloud
        entries = self.queue.take(cloud.max_batch * 4, now)
        by_model = defaultdict(list)
        for e in entries:
            by_model[e.model].append(e)
        resolved = 0
        for model, group in by_model.items():
            rule = self.cascade.rule(model)
            if rule is None:
                continue  # no cascade for it any more: the TTL will finalize the edge answer
            group = group[:cloud.max_batch]
            answer = cloud.ask(rule.cloud_model, np.stack([e.data for e in group]),
                               self.timeout)
            done = []
            for e, label, conf in zip(group, answer.labels, answer.confidences, strict=False):
                extra = {**e.fallback.extra, "cloud_label": int(label),
                         "cloud_confidence": float(conf), "degraded": False, "spooled": True}
                done.append((e.spool_id, ResultRow(e.item_id, int(label), float(conf), "cloud",
                                                   e.fallback.node, e.fallback.model_version,
                                                   extra)))
            refused = group[answer.answered:answer.answered + answer.refused]
            for e in refused:  # would be refused again: the edge answer becomes final
                done.append((e.spool_id, replace(
                    e.fallback, extra={**e.fallback.extra, "degraded": True, "spooled": True,
                                       "cloud_error": answer.refusal.summary})))
            if done:
                resolved += self.queue.resolve(done)
            if answer.answered and self.cascade.on_compared is not None:
                for c in replayed(model, group[:answer.answered], answer.labels,
                                  answer.confidences):
                    self.cascade.on_compared(c)
            waiting = group[answer.answered + answer.refused:]
            if answer.reason and waiting:
                self.queue.failed([e.spool_id for e in waiting], answer.reason)
        self.replayed += resolved
        if resolved and self.on_change is not None:
            self.on_change()
        return resolved

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # One replica replays a shared spool (each entry costs a cloud call).
                resolved = (self.run_once() if self.queue.store.owns("spool-replayer")
                            else 0)
            except (StoreFullError, StoreUnavailableError):
                resolved = 0  # logged once by the store; the next round tries again
            except Exception:  # noqa: BLE001 - keep replaying
                log.exception("spool replay round failed")
                resolved = 0
            if not resolved:
                self._stop.wait(self.interval)


def replayed(model: str, entries: list, labels: np.ndarray,
             confidences: np.ndarray) -> list[Comparison]:
    """The edge/cloud comparisons of spool ``entries`` the cloud answered (``labels``,
    ``confidences`` in their order), one per job and edge model version."""
    out = []
    for job_id, version in sorted({(e.job_id, e.fallback.model_version) for e in entries}):
        idx = [k for k, e in enumerate(entries)
               if (e.job_id, e.fallback.model_version) == (job_id, version)]
        picked = [entries[k] for k in idx]
        out.append(Comparison(
            model, version, "", "escalated", [e.item_id for e in picked],
            np.stack([e.data for e in picked]),
            np.array([int(e.fallback.extra.get("edge_label", e.fallback.label))
                      for e in picked], np.int64),
            np.array([float(e.fallback.extra.get("edge_confidence", e.fallback.confidence))
                      for e in picked], np.float32),
            np.asarray(labels)[idx], np.asarray(confidences)[idx], job_id))
    return out
