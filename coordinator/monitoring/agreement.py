"""Edge/cloud agreement: how often the edge model's top-1 label is the cloud's, as a drift
signal, per model, version, segment and source.

Sources: ``audit`` (a sample of items the edge answered confidently, also asked of the
cloud in the background) and ``escalated`` (items the policy sent to the cloud). On audited
items agreement estimates the accuracy of the accepted edge answers against the bigger
model; on escalated items it is lower by design, and its change is the signal.

Algorithm: for each key ``(model, version, segment, source)`` the last ``window``
comparisons are kept as booleans (a ring; oldest dropped first) with a running count of
agreements, so ``record`` is O(items) and ``fraction`` O(1). A key's agreement is defined
only once it holds at least ``min_items`` comparisons (``None`` before). An ``audit`` key
is *low* while its agreement is defined and below ``warn_below`` (an ``escalated`` key
never is: its agreement is low by design, so only its gauge is reported); ``record``
returns the change of that state (``"low"`` when it starts, ``"recovered"`` when it
ends, else ``None``), so a caller warns once per crossing rather than on every item.

Pure: no I/O, no clock, no threads of its own; a lock makes one tracker shareable by the
threads that record into it. Bad arguments raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

SOURCES = ("audit", "escalated")
JUDGED = "audit"  # the source whose low agreement warns (escalated items disagree by design)


class AgreementKey(NamedTuple):
    """What agreement is kept apart by."""

    model: str
    version: str
    segment: str
    source: str  # audit | escalated


@dataclass(frozen=True)
class AgreementStat:
    """A key's window: ``items`` comparisons, ``agreed`` of them with equal labels;
    ``fraction`` is ``agreed / items`` once ``items >= min_items``, else None; ``low``
    while ``fraction`` is below the tracker's ``warn_below``."""

    key: AgreementKey
    items: int
    agreed: int
    fraction: float | None
    low: bool


class _Window:
    __slots__ = ("agreed", "low", "ring")

    def __init__(self, size: int):
        self.ring: deque[bool] = deque(maxlen=size)
        self.agreed = 0
        self.low = False


class AgreementTracker:
    """Rolling edge/cloud agreement per ``AgreementKey`` (see the module docstring)."""

    def __init__(self, window: int = 500, min_items: int = 50, warn_below: float = 0.9):
        for name, value in (("window", window), ("min_items", min_items)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {value!r}")
        if min_items > window:
            raise ValueError(f"min_items: must be <= window ({window}), got {min_items}")
        if not (isinstance(warn_below, (int, float)) and math.isfinite(warn_below)
                and 0.0 <= warn_below <= 1.0):
            raise ValueError(f"warn_below: must be a fraction from 0 to 1, got {warn_below!r}")
        self.window = window
        self.min_items = min_items
        self.warn_below = float(warn_below)
        self._windows: dict[AgreementKey, _Window] = {}
        self._lock = threading.Lock()

    def record(self, key: AgreementKey, agreed: Iterable[bool]) -> tuple[AgreementStat, str | None]:
        """Add comparisons (True: the labels were equal) to ``key``'s window; returns the
        key's stat afterwards and the change of its low state (``"low"``, ``"recovered"``
        or None)."""
        if key.source not in SOURCES:
            raise ValueError(f"source: must be one of {SOURCES}, got {key.source!r}")
        with self._lock:
            w = self._windows.get(key)
            if w is None:
                w = self._windows[key] = _Window(self.window)
            for same in agreed:
                if len(w.ring) == w.ring.maxlen and w.ring[0]:
                    w.agreed -= 1
                w.ring.append(bool(same))
                w.agreed += bool(same)
            stat = self._stat(key, w)
            change = None
            if stat.low != w.low:
                change = "low" if stat.low else "recovered"
                w.low = stat.low
            return stat, change

    def stat(self, key: AgreementKey) -> AgreementStat | None:
        """``key``'s stat, or None when nothing was recorded for it."""
        with self._lock:
            w = self._windows.get(key)
            return None if w is None else self._stat(key, w)

    def stats(self) -> list[AgreementStat]:
        """Every key's stat, in key order."""
        with self._lock:
            return [self._stat(k, self._windows[k]) for k in sorted(self._windows)]

    def _stat(self, key: AgreementKey, w: _Window) -> AgreementStat:
        items = len(w.ring)
        fraction = w.agreed / items if items >= self.min_items else None
        low = key.source == JUDGED and fraction is not None and fraction < self.warn_below
        return AgreementStat(key, items, w.agreed, fraction, low)
