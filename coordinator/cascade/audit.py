"""Audit sampling: a share of the confidently answered items also goes to the cloud tier,
in the background, to measure how often the edge agrees with the bigger model.

* ``AuditSampler.select`` picks, per model, the accepted items whose id hashes below the
  model's rate (``hash_uniform`` of the id with an audit salt, so the pick is stable for
  an id, and independent of the ``random`` escalation policy's pick).
* ``Auditor.offer`` hands the picked items to a bounded queue and returns at once: the
  answer never waits for an audit. When the queue holds ``max_items`` items (or
  ``max_bytes`` of item data: camera frames are large) new ones are dropped
  (``queue_full``). One worker thread takes the queue's items per cloud model,
  up to ``max_batch`` at a time, and asks the cloud tier with ``audit=True``: audits take
  only budget beyond what escalations keep, and only a free call slot (``CloudTier``).
  Items the cloud does not answer are dropped with its reason (``budget``,
  ``breaker_open``, ``busy``, ``failed``, ``refused``); answered ones become a
  ``Comparison`` for ``on_compared``.

Failure behaviour: nothing here raises into the caller's path; an unexpected error in the
worker is logged and the worker goes on with the next items.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from coordinator.cascade.cloud import CloudTier
from coordinator.cascade.policies import hash_uniform
from edgeshard.buffer import BoundedBuffer

log = logging.getLogger(__name__)

AUDIT_SALT = "audit:"  # the audit pick hashes "audit:<id>", not the id the random policy hashes


@dataclass(frozen=True)
class Comparison:
    """Edge and cloud answers for items of one model version and segment: ``source`` is
    ``audit`` or ``escalated``; ``items`` ``[n, ...]`` as submitted; labels int64 ``[n]``,
    confidences float32 ``[n]``; ``job_id`` the batch job the items belong to ("" for an
    online request), so that a re-run shard's items are kept once."""

    model: str
    version: str
    segment: str
    source: str
    ids: Sequence[str]
    items: np.ndarray
    edge_labels: np.ndarray
    edge_confidences: np.ndarray
    cloud_labels: np.ndarray
    cloud_confidences: np.ndarray
    job_id: str = ""

    @property
    def agreed(self) -> np.ndarray:
        """Bool ``[n]``: the edge's label is the cloud's."""
        return np.asarray(self.edge_labels) == np.asarray(self.cloud_labels)


class AuditSampler:
    """Which accepted items of a model are audited: rate per model, in [0, 1]."""

    def __init__(self, rates: Mapping[str, float]):
        for model, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"audit: rate of {model} must be from 0 to 1, got {rate}")
        self.rates = dict(rates)

    def select(self, model: str, ids: Sequence[str] | None, accepted: np.ndarray) -> np.ndarray:
        """Bool ``[N]``: the ``accepted`` items of ``model`` picked for audit (none without
        a rate or without ids)."""
        accepted = np.asarray(accepted, dtype=bool)
        rate = self.rates.get(model, 0.0)
        if rate <= 0.0 or ids is None:
            return np.zeros(len(accepted), dtype=bool)
        if rate >= 1.0:
            return accepted.copy()
        picked = np.fromiter((hash_uniform(AUDIT_SALT + str(i)) < rate for i in ids),
                             dtype=bool, count=len(accepted))
        return accepted & picked


@dataclass(frozen=True)
class AuditTask:
    """Items waiting for the audit worker: a ``Comparison`` without the cloud's answer yet."""

    cloud_model: str
    model: str
    version: str
    segment: str
    ids: list[str]
    items: np.ndarray
    edge_labels: np.ndarray
    edge_confidences: np.ndarray
    job_id: str = ""  # "" for an online request


class Auditor:
    """The bounded audit queue and its worker (see the module docstring).

    ``on_compared(comparison)`` gets the cloud's answers; ``on_outcome(model, outcome,
    items)`` counts items dropped (queue_full, budget, breaker_open, busy, failed,
    refused) and compared (answered); ``timeout_s`` bounds each cloud call.
    """

    def __init__(self, cloud: CloudTier, on_compared: Callable[[Comparison], None],
                 max_items: int = 256, timeout_s: float = 5.0,
                 on_outcome: Callable[[str, str, int], None] = lambda m, o, n: None,
                 max_bytes: int = 32 * 1024 * 1024):
        if max_items < 1:
            raise ValueError(f"audit_queue: must be >= 1, got {max_items}")
        self.cloud = cloud
        self.on_compared = on_compared
        self.on_outcome = on_outcome
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._queue: BoundedBuffer[AuditTask] = BoundedBuffer(
            max_items, max_bytes, lambda t: (len(t.ids), int(t.items.nbytes)))
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        """Items waiting for the worker."""
        return self._queue.items

    def offer(self, task: AuditTask) -> bool:
        """Queue ``task`` if it fits, without waiting; False (dropped, counted) otherwise."""
        fits = self._queue.put(task)
        if not fits:
            self.on_outcome(task.model, "queue_full", len(task.ids))
        return fits

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker; items still queued are dropped."""
        self._queue.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def _take(self) -> list[AuditTask]:
        """The oldest task's cloud model's tasks, up to the cloud's batch size in items
        (a task larger than that alone); waits for one; [] once closed."""
        def one_batch(tasks) -> list[AuditTask]:
            if not tasks:
                return []
            model, room, taken = tasks[0].cloud_model, self.cloud.max_batch, []
            for task in tasks:
                if task.cloud_model == model and (not taken or len(task.ids) <= room):
                    taken.append(task)
                    room -= len(task.ids)
            return taken

        while True:
            self._queue.wait()
            if self._queue.closed:
                return []
            taken = self._queue.take(one_batch)
            if taken:
                return taken

    def _run(self) -> None:
        while True:
            tasks = self._take()
            if not tasks:
                return
            try:
                self.run_once(tasks)
            except Exception:  # noqa: BLE001 - the worker must outlive a bad batch
                log.exception("audit of %d item(s) failed unexpectedly",
                              sum(len(t.ids) for t in tasks))

    def run_once(self, tasks: list[AuditTask]) -> None:
        """Ask the cloud about ``tasks`` (one cloud model) and report what came of them."""
        items = np.concatenate([t.items for t in tasks])
        answer = self.cloud.ask(tasks[0].cloud_model, items, self.timeout_s, audit=True)
        at = 0
        for task in tasks:
            n = len(task.ids)
            got = max(0, min(n, answer.answered - at))
            if got:
                self.on_outcome(task.model, "compared", got)
                self.on_compared(Comparison(
                    task.model, task.version, task.segment, "audit", task.ids[:got],
                    task.items[:got], task.edge_labels[:got], task.edge_confidences[:got],
                    answer.labels[at:at + got], answer.confidences[at:at + got], task.job_id))
            if got < n:
                self.on_outcome(task.model, _reason(answer.reason), n - got)
            at += n


def _reason(reason: str) -> str:
    """The outcome label of a cloud answer's ``reason`` for the items it left."""
    head = reason.split(":", 1)[0]
    if head == "error":
        return "failed"
    return head if head in ("budget", "breaker_open", "busy", "refused") else "failed"
