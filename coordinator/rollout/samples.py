"""What the coordinator saw of each arm of a running rollout, kept for ``judge``.

One ``Tally`` per (model, arm): counts since the rollout started on this process, and
the latencies and confidences of the most recent ``window`` observations (older ones
drop out, so memory stays bounded on a long rollout). Thread-safe: the online front,
the shadow mirror and the job dispatcher all record into it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from coordinator.rollout.verdict import Sample

WINDOW = 20_000


class Tally:
    """The running counts of one arm; ``sample()`` freezes them into a ``Sample``."""

    def __init__(self, window: int = WINDOW):
        self._lock = threading.Lock()
        self.requests = self.errors = self.items = self.escalated = 0
        self.agreed = self.compared = 0
        self._latencies: deque[float] = deque(maxlen=window)
        self._confidences: deque[float] = deque(maxlen=window)

    def answered(self, seconds: float, confidences: Iterable[float] = (), items: int = 0,
                 escalated: int = 0) -> None:
        """A request (or job shard) that succeeded in ``seconds``, with its items' top-1
        ``confidences`` (when the model has them), ``items`` answered and how many of
        them the cascade escalated."""
        with self._lock:
            self.requests += 1
            self._latencies.append(seconds)
            self._confidences.extend(float(c) for c in confidences)
            self.items += items
            self.escalated += escalated

    def failed(self) -> None:
        """A request (or job shard) that failed at the node."""
        with self._lock:
            self.requests += 1
            self.errors += 1

    def compared_with_stable(self, agreed: int, compared: int) -> None:
        """Shadowed items: ``agreed`` of ``compared`` had stable's top-1 label."""
        with self._lock:
            self.agreed += agreed
            self.compared += compared

    def sample(self) -> Sample:
        """The counts so far as ``verdict.Sample``."""
        with self._lock:
            return Sample(self.requests, self.errors, tuple(self._latencies),
                          tuple(self._confidences), self.items, self.escalated,
                          self.agreed, self.compared)


class Tallies:
    """Every (model, arm)'s ``Tally``; ``reset(model)`` starts a model's afresh (a new
    rollout)."""

    def __init__(self, window: int = WINDOW):
        self.window = window
        self._lock = threading.Lock()
        self._tallies: dict[tuple[str, str], Tally] = {}

    def of(self, model: str, arm: str) -> Tally:
        """The tally of ``arm`` of ``model``'s rollout (created on first use)."""
        with self._lock:
            tally = self._tallies.get((model, arm))
            if tally is None:
                tally = self._tallies[(model, arm)] = Tally(self.window)
            return tally

    def reset(self, model: str) -> None:
        """Forget what was seen of ``model``."""
        with self._lock:
            for key in [k for k in self._tallies if k[0] == model]:
                del self._tallies[key]
