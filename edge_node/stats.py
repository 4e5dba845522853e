"""Per model-version statistics in the shape of Triton's ModelStatistics extension.

Cumulative counts and nanoseconds since start-up; ``average batch = inference_count /
execution_count``. Thread-safe; read with ``snapshot()``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class Duration:
    """A count of events and their cumulative duration in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        """Add ``count`` events lasting ``seconds`` in total."""
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class BatchStat:
    """Cumulative compute durations of the batches of one size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class VersionStats:
    """Statistics of one model version: request outcomes and phase durations, and per batch size.

    ``inference_count`` counts items, ``execution_count`` model invocations;
    ``last_inference_ms`` is a Unix time in milliseconds.
    """

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0  # items (rows) inferred
    execution_count: int = 0  # model invocations (batches)
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStat] = field(default_factory=lambda: defaultdict(BatchStat))


class StatsBook:
    """All versions' statistics, keyed by (model, version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str], VersionStats] = {}

    def _get(self, key: tuple[str, str]) -> VersionStats:
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = VersionStats(*key)
        return stats

    def register(self, key: tuple[str, str]) -> None:
        """Start statistics for ``key`` (model, version): listed before its first request."""
        with self._lock:
            self._get(key)

    def request(self, key, ok: bool, total: float, queue: float, pre: float, infer: float,
                post: float) -> None:
        """One request finished (ok or failed after it reached the model)."""
        with self._lock:
            s = self._get(key)
            if not ok:
                s.fail.add(total)
                return
            s.success.add(total)
            s.queue.add(queue)
            s.compute_input.add(pre)
            s.compute_infer.add(infer)
            s.compute_output.add(post)
            s.last_inference_ms = int(time.time() * 1000)

    def batch(self, key, rows: int, infer: float, post: float) -> None:
        """One model invocation of ``rows`` items."""
        with self._lock:
            s = self._get(key)
            s.inference_count += rows
            s.execution_count += 1
            b = s.batches[rows]
            b.compute_infer.add(infer)
            b.compute_output.add(post)

    def snapshot(self, name: str = "", version: str = "") -> list[VersionStats]:
        """Copies of the statistics by (model, version), optionally filtered by name and version."""
        with self._lock:
            return [
                _copy(s)
                for (n, v), s in sorted(self._stats.items())
                if (not name or n == name) and (not version or v == version)
            ]


def _copy(s: VersionStats) -> VersionStats:
    c = VersionStats(**{k: v for k, v in vars(s).items() if k != "batches"})
    for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        setattr(c, k, Duration(**vars(getattr(s, k))))
    c.batches = {
        size: BatchStat(*(Duration(**vars(d)) for d in vars(b).values()))
        for size, b in s.batches.items()
    }
    return c
