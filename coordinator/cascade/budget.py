"""Budgets for cloud escalation: a token bucket for the call rate and a cost meter.

Time is an argument (``now``, seconds on a monotonic clock); no I/O, no threads. Each
class holds a ``threading.Lock`` around its read-modify-write so dispatcher threads may
share one instance (the only non-pure part).

* :class:`TokenBucket`: starts full with ``burst`` tokens and refills continuously at
  ``rate_per_s`` up to ``burst``. :meth:`TokenBucket.take` grants as many of the
  requested tokens as are whole and available (a partial grant: the caller escalates
  that many items and keeps the edge answer for the rest). Over any sequence of takes,
  the total granted is at most ``burst + rate * (t_last - t_first)``. ``rate_per_s``
  ``None`` or ``inf`` means unlimited: every take is granted in full.
  :meth:`TokenBucket.take_spare` grants only tokens beyond a reserve of ``keep``, so
  that a lower-priority user (audit sampling) never spends what escalations need.
* :class:`CostMeter`: accumulates calls, items and their cost
  ``calls * cost_per_call + items * cost_per_item`` (for metrics and reports).

Failure behaviour: ``now`` earlier than the latest seen (threads read the clock before
taking the lock) counts as no time passing, never as negative refill. Bad arguments
raise ``ValueError`` whose message starts with the argument's name.
"""

from __future__ import annotations

import math
import threading

__all__ = ["CostMeter", "TokenBucket"]


def _number(value: object, name: str, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    result = float(value)
    if math.isnan(result) or (math.isinf(result) and not allow_inf):
        raise ValueError(f"{name}: must be finite, got {result!r}")
    return result


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: must be an int >= 0, got {value!r}")
    return value


class TokenBucket:
    """Token bucket with continuous refill and partial grants (see the module docstring)."""

    def __init__(self, rate_per_s: float | None, burst: float):
        rate = math.inf if rate_per_s is None else _number(rate_per_s, "rate_per_s",
                                                           allow_inf=True)
        if rate < 0:
            raise ValueError(f"rate_per_s: must be >= 0 (or None for unlimited), got {rate!r}")
        size = _number(burst, "burst")
        if size < 1:
            raise ValueError(f"burst: must be >= 1 (a smaller bucket never holds a token), "
                             f"got {size!r}")
        self.rate_per_s = rate
        self.burst = size
        self._tokens = size
        self._last: float | None = None
        self._lock = threading.Lock()

    @property
    def unlimited(self) -> bool:
        """True when ``rate_per_s`` is ``inf`` (or given as ``None``): takes are granted in full."""
        return math.isinf(self.rate_per_s)

    def _refill(self, now: float) -> None:
        now = _number(now, "now")
        if self._last is None:
            self._last = now
        elif now > self._last:
            self._tokens = min(self.burst, self._tokens + self.rate_per_s * (now - self._last))
            self._last = now

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now`` (fractional; ``inf`` when unlimited)."""
        if self.unlimited:
            return math.inf
        with self._lock:
            self._refill(now)
            return self._tokens

    def take(self, n: int, now: float) -> int:
        """Grant up to ``n`` tokens at ``now``; returns how many (0..n)."""
        n = _count(n, "n")
        if self.unlimited:
            return n
        with self._lock:
            self._refill(now)
            granted = min(n, math.floor(self._tokens))
            self._tokens -= granted
            return granted


    def take_spare(self, n: int, now: float, keep: float) -> int:
        """Grant up to ``n`` tokens at ``now`` while leaving at least ``keep`` in the
        bucket; returns how many (0..n). Unlimited buckets grant ``n``."""
        n = _count(n, "n")
        keep = _number(keep, "keep")
        if self.unlimited:
            return n
        with self._lock:
            self._refill(now)
            granted = max(0, min(n, math.floor(self._tokens - keep)))
            self._tokens -= granted
            return granted


class CostMeter:
    """Running totals of cloud calls, items sent and their cost."""

    def __init__(self, cost_per_call: float = 0.0, cost_per_item: float = 0.0):
        self.cost_per_call = _number(cost_per_call, "cost_per_call")
        self.cost_per_item = _number(cost_per_item, "cost_per_item")
        for name, value in (("cost_per_call", self.cost_per_call),
                            ("cost_per_item", self.cost_per_item)):
            if value < 0:
                raise ValueError(f"{name}: must be >= 0, got {value!r}")
        self._calls = 0
        self._items = 0
        self._lock = threading.Lock()

    def record(self, items: int, calls: int = 1) -> float:
        """Account ``calls`` calls carrying ``items`` items; returns their cost."""
        items = _count(items, "items")
        calls = _count(calls, "calls")
        with self._lock:
            self._calls += calls
            self._items += items
        return calls * self.cost_per_call + items * self.cost_per_item

    @property
    def calls(self) -> int:
        """Calls recorded so far."""
        with self._lock:
            return self._calls

    @property
    def items(self) -> int:
        """Items recorded so far."""
        with self._lock:
            return self._items

    @property
    def cost(self) -> float:
        """``calls * cost_per_call + items * cost_per_item`` so far."""
        with self._lock:
            return self._calls * self.cost_per_call + self._items * self.cost_per_item

    def snapshot(self) -> dict[str, float]:
        """``{"calls", "items", "cost"}`` read together."""
        with self._lock:
            cost = self._calls * self.cost_per_call + self._items * self.cost_per_item
            return {"calls": self._calls, "items": self._items, "cost": cost}
