"""Where the cascade's edge/cloud comparisons go: the agreement tracker, its gauges, a
warning when agreement falls below the threshold, and the hard examples kept for retraining.

``AgreementWatch.compared`` is called with each ``Comparison`` (escalated items on the
caller's path, audited ones on the audit worker): it records agreement per model,
version, segment (a bounded label, ``SegmentLabels``) and source, hands the stat to
``on_stat`` (gauges), logs a warning when a key's agreement falls below the tracker's
``warn_below`` over at least its ``min_items`` (and an info line when it recovers), and
passes the comparison to ``keep`` (the hard example writer, which must not block).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from coordinator.cascade.audit import Comparison
from coordinator.monitoring.agreement import AgreementKey, AgreementStat, AgreementTracker
from coordinator.monitoring.segments import SegmentLabels

log = logging.getLogger(__name__)


class AgreementWatch:
    """Edge/cloud agreement and hard examples from comparisons (see the module docstring)."""

    def __init__(self, tracker: AgreementTracker, segments: SegmentLabels | None = None,
                 on_stat: Callable[[AgreementStat], None] = lambda stat: None,
                 keep: Callable[[Comparison], None] | None = None):
        self.tracker = tracker
        self.segments = segments or SegmentLabels()
        self.on_stat = on_stat
        self.keep = keep

    def compared(self, c: Comparison) -> None:
        """Record ``c``'s agreement, report and keep it."""
        key = AgreementKey(c.model, c.version, self.segments.label(c.model, c.segment),
                           c.source)
        stat, change = self.tracker.record(key, c.agreed.tolist())
        self.on_stat(stat)
        if change == "low":
            log.warning("edge/cloud agreement of %s version %s%s on %s items is %.3f over the "
                        "last %d, below --agreement-warn %g: the edge model may have drifted "
                        "(export its hard examples with `edge-coordinator export-examples %s`)",
                        key.model, key.version or "?", _segment(key), key.source,
                        stat.fraction, stat.items, self.tracker.warn_below, key.model)
        elif change == "recovered":
            log.info("edge/cloud agreement of %s version %s%s on %s items is back at %.3f",
                     key.model, key.version or "?", _segment(key), key.source, stat.fraction)
        if self.keep is not None:
            self.keep(c)


def _segment(key: AgreementKey) -> str:
    return f" segment {key.segment}" if key.segment else ""
