"""The cloud tier as the coordinator uses it: budgeted, bounded, guarded by a breaker.

``CloudTier.ask(cloud_model, items, timeout)`` answers as many items as it may and can:

1. the circuit breaker must allow a call (after ``breaker_failures`` consecutive
   failures it opens for ``breaker_reset_s``, then lets one trial call through);
2. the rate budget (token bucket, items per second) grants up to ``len(items)`` tokens;
   items beyond the grant are not sent;
3. at most ``concurrency`` calls are in flight; a caller waits for a slot only within
   its timeout;
4. granted items go in batches of at most ``max_batch``, each call with a deadline; the
   first failure stops the rest.

The answer says how many leading items were answered and why the rest were not
(``breaker_open``, ``budget``, ``busy``, ``error: ...``), so the caller spools them.
Calls, items and cost are counted for metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from coordinator.cascade.breaker import CircuitBreaker
from coordinator.cascade.budget import CostMeter, TokenBucket

log = logging.getLogger(__name__)

# transport(cloud_model, items, timeout) -> (labels int64 [n], confidences float32 [n])
Transport = Callable[[str, np.ndarray, float], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class CloudAnswer:
    """The cloud's answer for the first ``answered`` items of a request.

    ``labels`` int64 ``[answered]`` and ``confidences`` float32 ``[answered]``; ``reason``
    says why the remaining items were not answered (``breaker_open``, ``budget``, ``busy``,
    ``error: ...``), empty when all were.
    """

    labels: np.ndarray  # for the first `answered` items
    confidences: np.ndarray
    answered: int
    reason: str = ""  # why the remaining items were not answered


class CloudTier:
    """The cloud tier behind a circuit breaker, a rate budget and a bound on concurrent calls.

    ``concurrency`` is the most calls in flight, ``max_batch`` the most items per call.
    ``on_call(cloud_model, outcome, items, seconds)`` is told of every call (a metrics hook);
    ``clock`` (seconds, monotonic) feeds the breaker and the budget.
    """

    def __init__(self, transport: Transport, breaker: CircuitBreaker, budget: TokenBucket,
                 cost: CostMeter, concurrency: int = 4, max_batch: int = 32,
                 on_call: Callable[[str, str, int, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.transport = transport
        self.breaker = breaker
        self.budget = budget
        self.cost = cost
        self.max_batch = max_batch
        self._slots = threading.BoundedSemaphore(concurrency)
        self.on_call = on_call  # metrics hook: (cloud_model, outcome, items, seconds)
        self.clock = clock

    def ask(self, cloud_model: str, items: np.ndarray, timeout: float) -> CloudAnswer:
        """Ask ``cloud_model`` about ``items`` (``[n, ...]``) within ``timeout`` seconds overall.

        Answers a leading prefix of the items (possibly empty) and never raises for a failed
        call: the failure is recorded against the breaker and given as the answer's ``reason``.
        """
        deadline = time.monotonic() + timeout
        n = len(items)
        labels = np.empty(n, dtype=np.int64)
        confidences = np.empty(n, dtype=np.float32)
        if not self.breaker.allow(self.clock()):
            return CloudAnswer(labels[:0], confidences[:0], 0, "breaker_open")
        granted = self.budget.take(n, self.clock())
        # If no call follows an allowed half-open trial (no budget, no slot), the breaker
        # starts a new trial round after its reset timeout: nothing wedges.
        if granted == 0:
            return CloudAnswer(labels[:0], confidences[:0], 0, "budget")
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return CloudAnswer(labels[:0], confidences[:0], 0, "busy")
        done, reason = 0, ""
        try:
            while done < granted:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = "error: deadline passed before the call"
                    break
                batch = items[done:min(granted, done + self.max_batch)]
                started = time.monotonic()
                try:
                    got_labels, got_conf = self.transport(cloud_model, batch, remaining)
                except Exception as exc:  # noqa: BLE001 - any failure counts against the cloud
                    self.breaker.record_failure(self.clock())
                    reason = f"error: {exc}"
                    self._observe(cloud_model, "failed", len(batch), started)
                    log.warning("cloud call for %d item(s) of %s failed: %s", len(batch),
                                cloud_model, exc)
                    break
                self.breaker.record_success(self.clock())
                self.cost.record(items=len(batch), calls=1)
                self._observe(cloud_model, "answered", len(batch), started)
                labels[done:done + len(batch)] = got_labels
                confidences[done:done + len(batch)] = got_conf
                done += len(batch)
        finally:
            self._slots.release()
        if not reason and granted < n:
            reason = "budget"
        return CloudAnswer(labels[:done], confidences[:done], done, reason)

    def _observe(self, model: str, outcome: str, items: int, started: float) -> None:
        if self.on_call is not None:
            self.on_call(model, outcome, items, time.monotonic() - started)
