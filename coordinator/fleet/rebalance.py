"""Rebalancing by speed: slow nodes get proportionally less work, without flapping.

Pure: no I/O, no threads; the clock is an argument. ``SlowNodePolicy`` turns per-node
latency (e.g. an ``Ewma`` of observed call latency) into routing-weight multipliers
that ``coordinator.fleet.placement`` uses.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field

from coordinator.fleet.placement import check_number

__all__ = ["Ewma", "NodeHealth", "NodeState", "SlowNodePolicy"]


class Ewma:
    """Exponentially weighted moving average, per sample (``alpha``) or per time
    (``half_life_s``); give exactly one.

    * alpha: ``v = alpha * x + (1 - alpha) * v``.
    * half_life_s: a sample's weight halves every ``half_life_s`` seconds; ``v`` is the
      weighted mean of all samples, so samples at the same instant count equally (a
      burst of completions is not reduced to its last one).

    The first sample sets the value. ``now`` must not go backwards (``ValueError``).
    """

    def __init__(self, *, alpha: float | None = None, half_life_s: float | None = None):
        if (alpha is None) == (half_life_s is None):
            raise ValueError("alpha or half_life_s: give exactly one")
        if alpha is not None:
            check_number("alpha", alpha, strict=True)
            if alpha > 1:
                raise ValueError(f"alpha must be <= 1, got {alpha!r}")
        if half_life_s is not None:
            check_number("half_life_s", half_life_s, strict=True)
        self.alpha = alpha
        self.half_life_s = half_life_s
        self._sum = 0.0
        self._weight = 0.0
        self._value: float | None = None
        self._last: float | None = None

    @property
    def value(self) -> float | None:
        """The current average; ``None`` before the first sample."""
        return self._value

    def update(self, value: float, now: float) -> float:
        """Add sample ``value`` at time ``now`` (seconds); return the new average.

        Raises ``ValueError`` for a non-finite value or time, or ``now`` earlier than the last.
        """
        check_number("value", value, minimum=-math.inf)
        check_number("now", now, minimum=-math.inf)
        if self._last is not None and now < self._last:
            raise ValueError(f"now must not go backwards: {now!r} < {self._last!r}")
        if self.alpha is not None:
            self._value = value if self._value is None else (
                self.alpha * value + (1.0 - self.alpha) * self._value)
        else:
            decay = 1.0 if self._last is None else 0.5 ** ((now - self._last) / self.half_life_s)
            self._sum = self._sum * decay + value
            self._weight = self._weight * decay + 1.0
            self._value = self._sum / self._weight
        self._last = now
        return self._value


class NodeState(enum.Enum):
    """A node's speed state under :class:`SlowNodePolicy`."""

    NORMAL = "normal"
    SLOW = "slow"


@dataclass(frozen=True)
class NodeHealth:
    """A node's speed state and when it entered it (the caller's clock, seconds)."""

    state: NodeState
    since: float


@dataclass
class SlowNodePolicy:
    """Weight multipliers that give slow nodes less work, with hysteresis.

    Each :meth:`update` takes every node's latency (an EWMA, e.g. from :class:`Ewma`)
    and the time. The reference is the fleet's low median (``statistics.median_low``:
    an actual node's latency, so in a fleet of two the slower is compared with the
    faster). A NORMAL node turns SLOW when its latency exceeds ``slow_factor x median``;
    a SLOW node turns NORMAL when its latency is at or below ``recover_factor x median``.
    Between the two it keeps its state (hysteresis), and no node switches before
    ``min_dwell_s`` seconds in its current state (so a latency oscillating across a
    threshold switches at most once per dwell). A node seen for the first time takes
    the state its latency says, from then on it dwells.

    Multipliers: 1.0 for NORMAL; ``median / latency`` clamped to
    ``[min_weight, 1]`` for SLOW, so a node 3x slower gets a third of the work.

    Nodes absent from ``latencies`` are forgotten. No nodes: ``{}``. One node: 1.0 and
    NORMAL (relative weights mean nothing alone). A latency that is negative or not
    finite, or ``now`` earlier than the previous call: ``ValueError``.
    """

    slow_factor: float = 2.0
    """Latency above this multiple of the median marks a node slow."""
    recover_factor: float = 1.3
    """Latency at or below this multiple of the median marks a slow node normal again."""
    min_weight: float = 0.1
    """Floor of a slow node's multiplier, in (0, 1]; keeps it probed by some traffic."""
    min_dwell_s: float = 10.0
    """Least time a node spends in a state before it may switch."""
    _health: dict[str, NodeHealth] = field(default_factory=dict, init=False, repr=False)
    _last_now: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_number("recover_factor", self.recover_factor, minimum=1.0)
        check_number("slow_factor", self.slow_factor, minimum=self.recover_factor, strict=True)
        check_number("min_weight", self.min_weight, strict=True)
        if self.min_weight > 1:
            raise ValueError(f"min_weight must be <= 1, got {self.min_weight!r}")
        check_number("min_dwell_s", self.min_dwell_s)

    @property
    def health(self) -> dict[str, NodeHealth]:
        """A copy of the per-node state."""
        return dict(self._health)

    def update(self, latencies: Mapping[str, float], now: float) -> dict[str, float]:
        """Take every node's latency at ``now`` (seconds); return weight multipliers by node.

        Multipliers are in ``[min_weight, 1]`` (see the class docstring). Raises ``ValueError``
        for a negative or non-finite latency, or ``now`` earlier than the previous call.
        """
        check_number("now", now, minimum=-math.inf)
        if self._last_now is not None and now < self._last_now:
            raise ValueError(f"now must not go backwards: {now!r} < {self._last_now!r}")
        for node_id, latency in latencies.items():
            check_number(f"latencies[{node_id!r}]", latency)
        self._last_now = now
        self._health = {n: h for n, h in self._health.items() if n in latencies}
        if len(latencies) <= 1:
            for node_id in latencies:
                old = self._health.get(node_id)
                if old is None or old.state is not NodeState.NORMAL:
                    self._health[node_id] = NodeHealth(NodeState.NORMAL, now)
            return dict.fromkeys(latencies, 1.0)

        median = statistics.median_low(latencies.values())
        weights = {}
        for node_id, latency in latencies.items():
            slow_now = latency > self.slow_factor * median
            old = self._health.get(node_id)
            if old is None:
                state = NodeState.SLOW if slow_now else NodeState.NORMAL
                self._health[node_id] = NodeHealth(state, now)
            elif now - old.since >= self.min_dwell_s:
                if old.state is NodeState.NORMAL and slow_now:
                    self._health[node_id] = NodeHealth(NodeState.SLOW, now)
                elif old.state is NodeState.SLOW and latency <= self.recover_factor * median:
                    self._health[node_id] = NodeHealth(NodeState.NORMAL, now)
            if self._health[node_id].state is NodeState.NORMAL or latency <= median:
                weights[node_id] = 1.0
            else:
                weights[node_id] = min(1.0, max(self.min_weight, median / latency))
        return weights
