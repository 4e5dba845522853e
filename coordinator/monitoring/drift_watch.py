"""The coordinator's view of drift: every node's windows, merged per model version and
segment, judged against the version's reference profile on each heartbeat.

Nodes send their current windows and the reference profiles of the versions they load
with every heartbeat (``edge_node.drift``); a window is the node's whole rolling state,
not a delta, so the newest report of a node replaces its previous one. The windows of one
(model, version, segment) from every node heard within ``stale_s`` are summed and judged
by ``coordinator.monitoring.drift.assess``. ``on_reading(model, version, segment,
reading)`` sets gauges; a window crossing the thresholds is logged as a warning once, and
once again when it clears. A version a node loads without a profile is logged once
(drift is not computed for it) and reported through ``on_unprofiled(model, version)``.
Thread-safe: heartbeats arrive on several threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.monitoring.drift import Reading, Stats, Thresholds, assess, merge

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # model, version, segment


@dataclass(frozen=True)
class NodeDrift:
    """What one heartbeat says about drift: ``references`` maps (model, version) to the
    version's reference statistics (None: no profile); ``windows`` maps (model, version,
    segment) to the node's window."""

    references: dict[tuple[str, str], Stats | None]
    windows: dict[Key, Stats]


class DriftWatch:
    """Merges node windows and judges them (see the module docstring)."""

    def __init__(self, thresholds: Thresholds,
                 on_reading: Callable[[str, str, str, Reading], None] = lambda *a: None,
                 on_unprofiled: Callable[[str, str], None] = lambda m, v: None,
                 stale_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.thresholds = thresholds
        self.on_reading = on_reading
        self.on_unprofiled = on_unprofiled
        self.stale_s = stale_s
        self.clock = clock
        self._lock = threading.Lock()
        self._nodes: dict[str, tuple[float, NodeDrift]] = {}
        self._drifted: set[Key] = set()
        self._unprofiled: set[tuple[str, str]] = set()
        self._unusable: set[tuple[Key, str]] = set()

    def report(self, node_id: str, drift: NodeDrift) -> dict[Key, Reading]:
        """Take a node's heartbeat report; judge the windows it touches. Returns the
        readings made (for tests and callers that want them)."""
        now = self.clock()
        with self._lock:
            self._nodes[node_id] = (now, drift)
            fresh = [d for t, d in self._nodes.values() if now - t <= self.stale_s]
            for node in [n for n, (t, _) in self._nodes.items() if now - t > self.stale_s]:
                del self._nodes[node]
            new_unprofiled = [k for k, ref in drift.references.items()
                              if ref is None and k not in self._unprofiled]
            self._unprofiled.update(new_unprofiled)
        for model, version in new_unprofiled:
            log.info("drift: model %s version %s has no reference profile (profile.json), so "
                     "its drift is not computed; make one with: edge-coordinator profile "
                     "--model %s --write", model, version, model)
            self.on_unprofiled(model, version)
        readings = {}
        for key in drift.windows:
            reading = self._judge(key, fresh)
            if reading is not None:
                readings[key] = reading
        return readings

    def _judge(self, key: Key, reports: list[NodeDrift]) -> Reading | None:
        model, version, segment = key
        reference = next((d.references.get((model, version)) for d in reports
                          if d.references.get((model, version)) is not None), None)
        if reference is None:
            return None
        windows = [d.windows[key] for d in reports if key in d.windows]
        try:
            reading = assess(reference, merge(windows), self.thresholds)
        except ValueError as exc:
            self._once(key, str(exc), f"drift: model {model} version {version} segment "
                       f"{segment!r}: windows cannot be judged: {exc}")
            return None
        self.on_reading(model, version, segment, reading)
        with self._lock:
            was = key in self._drifted
            if reading.drifted:
                self._drifted.add(key)
            elif reading.judged:
                self._drifted.discard(key)
        if reading.drifted and not was:
            log.warning("drift: model %s version %s segment %r drifted from its reference "
                        "over the last %d items: %s", model, version, segment, reading.items,
                        "; ".join(reading.reasons))
        elif was and reading.judged and not reading.drifted:
            psi = ", ".join(f"{f} PSI {v:.3f}" for f, v in reading.psi.items())
            log.warning("drift: model %s version %s segment %r is back within its thresholds "
                        "(%s over the last %d items)", model, version, segment, psi,
                        reading.items)
        return reading

    def _once(self, key: Key, what: str, message: str) -> None:
        with self._lock:
            if (key, what) in self._unusable:
                return
            self._unusable.add((key, what))
        log.warning("%s", message)

    def drifted(self) -> set[Key]:
        """The (model, version, segment) windows over their thresholds now."""
        with self._lock:
            return set(self._drifted)
