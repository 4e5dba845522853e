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
A call the cloud refuses as malformed (a ``PeerStatusError`` whose status blames the
request, e.g. INVALID_ARGUMENT) proves the cloud healthy: it never counts against the
breaker; the answer's ``refusal`` carries it, and its items are not worth retrying.
An audit (``ask(..., audit=True)``: a sample of confidently answered items checked
against the cloud in the background) gives way to escalations: it takes only budget
tokens beyond ``AUDIT_RESERVE`` of the bucket's burst, and only a free call slot, never
waiting for one (``busy`` otherwise). Calls, items and cost are counted for metrics. A
failing cloud is logged once when it starts failing and once when it answers again, not
on every call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from coordinator.cascade.breaker import BreakerState, CircuitBreaker
from coordinator.cascade.budget import CostMeter, TokenBucket
from edgeshard.errors import PeerStatusError

log = logging.getLogger(__name__)

# transport(cloud_model, items, timeout) -> (labels int64 [n], confidences float32 [n]);
# raises PeerStatusError when the cloud answers with an error status.
Transport = Callable[[str, np.ndarray, float], tuple[np.ndarray, np.ndarray]]

AUDIT_RESERVE = 0.5  # share of the budget's burst that audits leave to escalations


@dataclass(frozen=True)
class CloudAnswer:
    """The cloud's answer for the first ``answered`` items of a request.

    ``labels`` int64 ``[answered]`` and ``confidences`` float32 ``[answered]``; ``reason``
    says why the remaining items were not answered (``breaker_open``, ``budget``, ``busy``,
    ``error: ...``, ``refused: ...``), empty when all were. ``refusal`` is set when the
    cloud refused the next ``refused`` items as malformed (a caller's fault, not the
    cloud's): they would be refused again.
    """

    labels: np.ndarray  # for the first `answered` items
    confidences: np.ndarray
    answered: int
    reason: str = ""  # why the remaining items were not answered
    refused: int = 0  # items after the answered ones that the cloud refused as malformed
    refusal: PeerStatusError | None = None


@dataclass(frozen=True)
class CloudTierStatus:
    """What an operator sees of the cloud tier: its address, ``CloudTier.state``, the last
    failure (one line) and how many escalations wait for it in the spool."""

    address: str
    state: str
    last_error: str
    spooled_items: int


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
        self._failing = False  # the last call failed (for logging each outage once)
        self._heard = False  # the cloud has answered (or been probed) at least once
        self.last_error = ""  # the last failure, one line

    @property
    def state(self) -> str:
        """``breaker_open``, ``failing`` (the last call failed), ``ok`` or ``unknown``
        (neither called nor probed yet)."""
        if self.breaker.state == BreakerState.OPEN:
            return "breaker_open"
        if self._failing:
            return "failing"
        return "ok" if self._heard else "unknown"

    def note_probe(self, error: str | None) -> None:
        """Record a health probe's outcome (None: it answered) for ``state``."""
        self._heard = error is None or self._heard
        self._failing = error is not None
        if error is not None:
            self.last_error = error

    def ask(self, cloud_model: str, items: np.ndarray, timeout: float,
            audit: bool = False) -> CloudAnswer:
        """Ask ``cloud_model`` about ``items`` (``[n, ...]``) within ``timeout`` seconds overall.

        Answers a leading prefix of the items (possibly empty) and never raises for a failed
        call: the failure is recorded against the breaker and given as the answer's ``reason``.
        ``audit``: a background check that gives way to escalations (module docstring).
        """
        deadline = time.monotonic() + timeout
        n = len(items)
        labels = np.empty(n, dtype=np.int64)
        confidences = np.empty(n, dtype=np.float32)
        if not self.breaker.allow(self.clock()):
            return CloudAnswer(labels[:0], confidences[:0], 0, "breaker_open")
        if audit:
            granted = self.budget.take_spare(n, self.clock(), self.budget.burst * AUDIT_RESERVE)
        else:
            granted = self.budget.take(n, self.clock())
        # If no call follows an allowed half-open trial (no budget, no slot), the breaker
        # starts a new trial round after its reset timeout: nothing wedges.
        if granted == 0:
            return CloudAnswer(labels[:0], confidences[:0], 0, "budget")
        wait = 0.0 if audit else max(0.0, deadline - time.monotonic())
        if not self._slots.acquire(timeout=wait):
            return CloudAnswer(labels[:0], confidences[:0], 0, "busy")
        done, reason, refused, refusal = 0, "", 0, None
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
                except PeerStatusError as exc:
                    if not exc.caller_fault:
                        reason = self._failed(cloud_model, batch, started, exc)
                        break
                    self.breaker.record_success(self.clock())  # it answered: it is healthy
                    self._heard, self._failing = True, False
                    self._observe(cloud_model, "refused", len(batch), started)
                    log.info("cloud refused %d item(s) of %s: %s: %s", len(batch),
                             cloud_model, exc.status, exc.details)
                    reason = f"refused: {exc.summary}"
                    refused, refusal = len(batch), exc
                    break
                except Exception as exc:  # noqa: BLE001 - any other failure is the cloud's
                    reason = self._failed(cloud_model, batch, started, exc)
                    break
                self.breaker.record_success(self.clock())
                self._heard = True
                if self._failing:
                    self._failing = False
                    log.info("cloud tier answers again (%s)", cloud_model)
                self.cost.record(items=len(batch), calls=1)
                self._observe(cloud_model, "answered", len(batch), started)
                labels[done:done + len(batch)] = got_labels
                confidences[done:done + len(batch)] = got_conf
                done += len(batch)
        finally:
            self._slots.release()
        if not reason and granted < n:
            reason = "budget"
        return CloudAnswer(labels[:done], confidences[:done], done, reason, refused, refusal)

    def _failed(self, model: str, batch: np.ndarray, started: float, exc: Exception) -> str:
        """Count a failed call against the breaker; log only the first of a run of them."""
        self.breaker.record_failure(self.clock())
        self._observe(model, "failed", len(batch), started)
        text = exc.summary if isinstance(exc, PeerStatusError) else str(exc)
        self.last_error = text
        if not self._failing:
            self._failing = True
            log.warning("cloud call for %d item(s) of %s failed: %s (logged once until the "
                        "cloud answers again; escalations wait in the spool)", len(batch),
                        model, text)
        return f"error: {text}"

    def _observe(self, model: str, outcome: str, items: int, started: float) -> None:
        if self.on_call is not None:
            self.on_call(model, outcome, items, time.monotonic() - started)
