"""Rolling drift windows: the statistics of what a node serves, per model version and segment.

For each model version that carries a reference profile (``profile.json``,
``edgeshard.profile``) the node keeps, per ``segment`` request parameter (e.g. a camera
id), the statistics of the newest ``window_items`` items it answered: per-channel counts,
sums and sums of squares of the input values, a histogram of them on the profile's bins,
and for classifiers a histogram of top-1 confidences. They are computed by
``ext.window_stats`` (Cython) on the request's input as the client sent it, on every
``sample_every``-th request of the version, after its answer is ready. Heartbeats carry
the windows and the references to the coordinator, which compares them
(``coordinator.monitoring.drift``).

A window is a queue of sampled batches with running sums: a new batch is added, and the
oldest ones leave while the rest still hold ``window_items`` items, so a window holds at
least ``window_items`` items once that many were sampled. At most ``max_segments`` segments
per version get their own window; later ones share the window ``_other``. An input whose
dtype or channel count differs from the profile's (e.g. FP32 tensors sent to a model
profiled on UINT8 images) is not counted: its values live on another scale. Windows of a
version that is unloaded are dropped. Thread-safe.

With several serving processes (``edge-node --processes``), each keeps its own windows;
the processes that do not heartbeat write theirs to a shared directory every second
(``write_windows``) and the one that does adds them to its own (``read_windows``,
``merge_windows``), so the coordinator sees the node's traffic, whichever process a
client's connection landed on.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import ext
from edge_node.errors import InvalidInputError
from edge_node.repository import ModelVersion
from edgeshard.profile import DriftProfile

log = logging.getLogger(__name__)

OTHER = "_other"  # the shared window of segments beyond max_segments
MAX_SEGMENT_CHARS = 64  # as the coordinator's front checks (coordinator.monitoring.segments)


def check_segment(value: object) -> str:
    """The ``segment`` request parameter as a name ("" when unset); ``InvalidInputError``
    naming ``parameters.segment`` when it is not at most 64 printable ASCII characters
    without spaces (the coordinator refuses the same names before forwarding)."""
    if value is None:
        return ""
    if (not isinstance(value, str) or len(value) > MAX_SEGMENT_CHARS
            or not all("!" <= c <= "~" for c in value)):
        raise InvalidInputError(
            "parameters.segment", f"must be a name of at most {MAX_SEGMENT_CHARS} printable "
            f"ASCII characters without spaces (e.g. 'camera-07'), got {value!r}"[:200])
    return value


MAX_VALUES_PER_REQUEST = 65_536  # input values of one request that the statistics read


def _rows_sample(x: np.ndarray) -> np.ndarray:
    """``x`` itself, or for a large input every k-th row (axis 1 of an image batch, else
    axis 0) so that about ``MAX_VALUES_PER_REQUEST`` values are read: a 480x640x3 frame
    costs ~30 µs instead of ~460, and whole rows keep every channel's values in step."""
    if x.size <= MAX_VALUES_PER_REQUEST or x.ndim < 2:
        return x
    axis = 1 if x.ndim >= 3 else 0
    step = -(-x.size // MAX_VALUES_PER_REQUEST)
    if step >= x.shape[axis]:  # fewer rows than the step: keep the first of each item
        step = x.shape[axis]
    index = [slice(None)] * x.ndim
    index[axis] = slice(None, None, step)
    return np.ascontiguousarray(x[tuple(index)])


@dataclass(frozen=True)
class WindowSnapshot:
    """One window's statistics: ``items`` rows; per input channel ``count`` values, their
    ``total`` and ``total_sq``; the input ``histogram`` on the profile's bins and the
    ``confidence`` histogram (None when the profile has none)."""

    model: str
    version: str
    segment: str
    items: int
    count: tuple[int, ...]
    total: tuple[float, ...]
    total_sq: tuple[float, ...]
    histogram: tuple[int, ...]
    confidence: tuple[int, ...] | None


@dataclass(frozen=True)
class Reference:
    """A loaded version's reference profile (None: it has no ``profile.json``)."""

    model: str
    version: str
    profile: DriftProfile | None


class _Window:
    """Sampled batches of one (model, version, segment), the newest ``limit`` items' worth.
    Adding one is an append (the request path pays no more); the sums are made when the
    window is read, once per heartbeat."""

    def __init__(self, channels: int, bins: int, confidence_bins: int | None):
        self.batches: deque = deque()
        self.items = 0
        self.channels = channels
        self.bins = bins
        self.confidence_bins = confidence_bins

    def add(self, rows: int, stats: ext.WindowStats, confidence: np.ndarray | None,
            limit: int) -> None:
        self.batches.append((rows, stats, confidence))
        self.items += rows
        while len(self.batches) > 1 and self.items - self.batches[0][0] >= limit:
            self.items -= self.batches.popleft()[0]

    def snapshot(self, model: str, version: str, segment: str) -> WindowSnapshot:
        """The window's sums now."""
        stats = [s for _, s, _ in self.batches]

        def total(values, width: int, dtype) -> np.ndarray:
            return np.sum(values, axis=0, dtype=dtype) if values else np.zeros(width, dtype)

        confidences = [c for _, _, c in self.batches if c is not None]
        return WindowSnapshot(
            model, version, segment, self.items,
            tuple(int(v) for v in total([s.count for s in stats], self.channels, np.int64)),
            tuple(float(v) for v in total([s.total for s in stats], self.channels,
                                          np.float64)),
            tuple(float(v) for v in total([s.total_sq for s in stats], self.channels,
                                          np.float64)),
            tuple(int(v) for v in total([s.histogram for s in stats], self.bins, np.int64)),
            None if self.confidence_bins is None else tuple(
                int(v) for v in total(confidences, self.confidence_bins, np.int64)))


class DriftWindows:
    """The node's drift windows (see the module docstring)."""

    def __init__(self, sample_every: int = 1, window_items: int = 1000,
                 max_segments: int = 16):
        self.sample_every = sample_every
        self.window_items = window_items
        self.max_segments = max_segments
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = {}
        self._windows: dict[tuple[str, str], dict[str, _Window]] = {}
        self._skipped: set[tuple[str, str, str]] = set()  # (model, version, why) logged

    def observe(self, mv: ModelVersion, segment: str, x: np.ndarray | None,
                confidences: np.ndarray | None) -> None:
        """Count one answered request of ``mv`` in ``segment``'s window (when sampled):
        ``x`` its input as the client sent it, ``confidences`` the top-1 confidence per row
        (None for a model that gives none)."""
        profile = mv.profile
        if profile is None or self.sample_every == 0 or x is None or x.ndim == 0:
            return
        key = mv.key
        with self._lock:
            n = self._requests.get(key, 0)
            self._requests[key] = n + 1
        if n % self.sample_every:
            return
        ref = profile.input
        if x.dtype != np.dtype(ref.dtype) or (ref.channels > 1 and x.shape[-1] != ref.channels):
            self._skip(key, f"inputs of dtype {x.dtype} shape {list(x.shape)} are not "
                       f"counted: the profile is of {ref.dtype} with {ref.channels} channel(s)")
            return
        hist = ref.histogram
        stats = ext.window_stats(_rows_sample(x), ref.channels, hist.lo, hist.hi,
                                 len(hist.counts))
        conf = None
        if profile.confidence is not None and confidences is not None:
            c = profile.confidence
            conf = ext.window_stats(np.ascontiguousarray(confidences, np.float32), 1, c.lo,
                                    c.hi, len(c.counts)).histogram
        with self._lock:
            segments = self._windows.setdefault(key, {})
            if segment not in segments and len(segments) >= self.max_segments:
                segment = OTHER
            window = segments.get(segment)
            if window is None:
                window = segments[segment] = _Window(
                    ref.channels, len(hist.counts),
                    None if profile.confidence is None else len(profile.confidence.counts))
            window.add(int(x.shape[0]), stats, conf, self.window_items)

    def _skip(self, key: tuple[str, str], why: str) -> None:
        """Log once per version why its requests are not counted."""
        with self._lock:
            if (*key, why) in self._skipped:
                return
            self._skipped.add((*key, why))
        log.warning("drift: model %s version %s: %s", key[0], key[1], why)

    def snapshot(self, versions: Iterable[ModelVersion]) -> tuple[list[Reference],
                                                                  list[WindowSnapshot]]:
        """The references of the loaded ``versions`` and their windows now; windows of
        versions no longer loaded are dropped."""
        versions = list(versions)
        live = {mv.key for mv in versions}
        refs = [Reference(mv.spec.name, mv.version, mv.profile)
                for mv in sorted(versions, key=lambda v: v.key)]
        out = []
        with self._lock:
            for key in [k for k in self._windows if k not in live]:
                del self._windows[key]
                self._requests.pop(key, None)
            for (model, version), segments in sorted(self._windows.items()):
                for segment, w in sorted(segments.items()):
                    out.append(w.snapshot(model, version, segment))
        return refs, out


SHARED_MAX_AGE_S = 5.0  # a process's shared windows older than this are left out (it died)


def write_windows(directory: Path, index: int, windows: list[WindowSnapshot]) -> None:
    """Publish serving process ``index``'s windows in ``directory`` (atomically)."""
    path = directory / f"drift-{index}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([asdict(w) for w in windows]))
    os.replace(tmp, path)


def read_windows(directory: Path, own_index: int,
                 max_age: float = SHARED_MAX_AGE_S) -> list[WindowSnapshot]:
    """The windows the other serving processes published within ``max_age`` seconds (a
    file being replaced or unreadable is skipped: the next beat has it)."""
    out = []
    now = time.time()
    for path in directory.glob("drift-*.json"):
        if path.name == f"drift-{own_index}.json":
            continue
        try:
            if now - path.stat().st_mtime > max_age:
                continue
            rows = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for row in rows:
            conf = row.pop("confidence")
            out.append(WindowSnapshot(**{k: tuple(v) if isinstance(v, list) else v
                                         for k, v in row.items()},
                                      confidence=None if conf is None else tuple(conf)))
    return out


def merge_windows(windows: list[WindowSnapshot]) -> list[WindowSnapshot]:
    """One window per (model, version, segment): the sums of the processes' windows
    (windows binned differently, from processes on different profiles, are not summed:
    the first is kept)."""
    merged: dict[tuple[str, str, str], WindowSnapshot] = {}
    for w in windows:
        key = (w.model, w.version, w.segment)
        m = merged.get(key)
        if m is None:
            merged[key] = w
            continue
        if len(m.histogram) != len(w.histogram) or len(m.count) != len(w.count):
            continue

        def add(a, b):
            return tuple(x + y for x, y in zip(a, b, strict=True))

        conf = (add(m.confidence, w.confidence)
                if m.confidence is not None and w.confidence is not None
                and len(m.confidence) == len(w.confidence) else m.confidence)
        merged[key] = WindowSnapshot(*key, m.items + w.items, add(m.count, w.count),
                                     add(m.total, w.total), add(m.total_sq, w.total_sq),
                                     add(m.histogram, w.histogram), conf)
    return [merged[k] for k in sorted(merged)]
