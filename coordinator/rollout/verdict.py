"""Is the canary worse than stable? Two samples in, a verdict with its statistics out.

Pure: no clock, no I/O. The coordinator feeds it what it saw of each version (online
answers and job shards sent to stable and to the canary, and the canary's answers to
shadowed items) and acts on the verdict.

A comparison waits until both versions have ``min_requests`` requests. Then the canary is
rolled back when any of these is worse than stable by more than its margin:

* error rate (failed requests / requests): ``canary - stable > error_rate``;
* latency p95: ``canary / stable > latency_p95_ratio`` (p95 over the requests that
  succeeded);
* confidence distribution: the two-sample Kolmogorov-Smirnov statistic of the items'
  top-1 confidences ``> confidence_ks`` *and* the canary's mean confidence lower
  (a distribution that moved up is not a regression);
* escalation rate (items the cascade sent to the cloud / items): ``canary - stable >
  escalation_rate``;
* agreement on shadowed items (same top-1 label as stable / items compared), once
  ``min_shadowed`` items were compared: ``< min_agreement``.

Otherwise the verdict is ``keep`` (the comparison goes on until an operator promotes the
canary, or ``promote_after`` requests when set, then ``promote``). Confidence, escalation
and agreement take part only where both samples have them (classification models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

WAIT, KEEP, PROMOTE, ROLLBACK = "wait", "keep", "promote", "rollback"


@dataclass(frozen=True)
class Margins:
    """How much worse than stable a canary may be, and how much evidence a verdict needs."""

    min_requests: int = 200
    error_rate: float = 0.02
    latency_p95_ratio: float = 1.5
    confidence_ks: float = 0.2
    escalation_rate: float = 0.05
    min_agreement: float = 0.9
    min_shadowed: int = 100
    promote_after: int = 0  # requests of the canary after which a clean canary is promoted

    def check(self) -> Margins:
        """Raise ``ValueError`` naming the field that is out of range; return self."""
        checks = {
            "min_requests": self.min_requests >= 1,
            "error_rate": 0 <= self.error_rate <= 1,
            "latency_p95_ratio": self.latency_p95_ratio >= 1 and math.isfinite(
                self.latency_p95_ratio),
            "confidence_ks": 0 < self.confidence_ks <= 1,
            "escalation_rate": 0 <= self.escalation_rate <= 1,
            "min_agreement": 0 <= self.min_agreement <= 1,
            "min_shadowed": self.min_shadowed >= 1,
            "promote_after": self.promote_after == 0 or self.promote_after >= self.min_requests,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: out of range ({getattr(self, name)!r})")
        return self


@dataclass(frozen=True)
class Sample:
    """What was seen of one version.

    ``latencies_s``: seconds of each successful request; ``confidences``: top-1
    confidence of each item answered (empty for a model without one); ``items`` and
    ``escalated``: items answered and those the cascade sent to the cloud;
    ``agreed``/``compared``: shadowed items whose top-1 label matched stable's.
    """

    requests: int = 0
    errors: int = 0
    latencies_s: tuple[float, ...] = ()
    confidences: tuple[float, ...] = ()
    items: int = 0
    escalated: int = 0
    agreed: int = 0
    compared: int = 0

    @property
    def error_rate(self) -> float:
        """Failed requests / requests (0 without requests)."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def latency_p95_s(self) -> float:
        """95th percentile latency of the successful requests, seconds (0 without)."""
        return float(np.percentile(self.latencies_s, 95)) if self.latencies_s else 0.0

    @property
    def escalation_rate(self) -> float:
        """Escalated items / items (0 without items)."""
        return self.escalated / self.items if self.items else 0.0


@dataclass(frozen=True)
class Verdict:
    """``decision`` (wait, keep, promote, rollback), the reasons for a rollback (one line
    each) and the statistics it rests on (name -> value, for logs and the admin command)."""

    decision: str
    reasons: tuple[str, ...] = ()
    stats: dict[str, float] = field(default_factory=dict)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if not a.size or not b.size:
        return 0.0
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / a.size
    cdf_b = np.searchsorted(b, points, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def judge(stable: Sample, canary: Sample, margins: Margins = Margins()) -> Verdict:
    """Compare ``canary`` with ``stable`` under ``margins``; see the module docstring."""
    stats = {
        "stable_requests": stable.requests, "canary_requests": canary.requests,
        "stable_error_rate": stable.error_rate, "canary_error_rate": canary.error_rate,
        "stable_latency_p95_s": stable.latency_p95_s, "canary_latency_p95_s":
            canary.latency_p95_s,
    }
    if min(stable.requests, canary.requests) < margins.min_requests:
        return Verdict(WAIT, (), stats)
    reasons = []
    if canary.error_rate - stable.error_rate > margins.error_rate:
        reasons.append(f"error rate {canary.error_rate:.3f} vs stable {stable.error_rate:.3f} "
                       f"(margin {margins.error_rate})")
    if stable.latency_p95_s > 0 and canary.latency_p95_s > 0:
        ratio = canary.latency_p95_s / stable.latency_p95_s
        stats["latency_p95_ratio"] = ratio
        if ratio > margins.latency_p95_ratio:
            reasons.append(f"latency p95 {canary.latency_p95_s * 1000:.1f} ms is {ratio:.2f}x "
                           f"stable's {stable.latency_p95_s * 1000:.1f} ms (margin "
                           f"{margins.latency_p95_ratio}x)")
    if stable.confidences and canary.confidences:
        ks = ks_statistic(np.asarray(stable.confidences), np.asarray(canary.confidences))
        mean_s, mean_c = float(np.mean(stable.confidences)), float(np.mean(canary.confidences))
        stats.update(confidence_ks=ks, stable_mean_confidence=mean_s,
                     canary_mean_confidence=mean_c)
        if ks > margins.confidence_ks and mean_c < mean_s:
            reasons.append(f"confidence fell: mean {mean_c:.3f} vs stable {mean_s:.3f}, KS "
                           f"statistic {ks:.3f} (margin {margins.confidence_ks})")
    if stable.items and canary.items and (stable.escalated or canary.escalated):
        stats.update(stable_escalation_rate=stable.escalation_rate,
                     canary_escalation_rate=canary.escalation_rate)
        if canary.escalation_rate - stable.escalation_rate > margins.escalation_rate:
            reasons.append(f"escalation rate {canary.escalation_rate:.3f} vs stable "
                           f"{stable.escalation_rate:.3f} (margin {margins.escalation_rate})")
    if canary.compared:
        agreement = canary.agreed / canary.compared
        stats.update(agreement=agreement, shadowed_compared=canary.compared)
        if canary.compared >= margins.min_shadowed and agreement < margins.min_agreement:
            reasons.append(f"agrees with stable on {agreement:.3f} of {canary.compared} "
                           f"shadowed items (minimum {margins.min_agreement})")
    if reasons:
        return Verdict(ROLLBACK, tuple(reasons), stats)
    if margins.promote_after and canary.requests >= margins.promote_after:
        return Verdict(PROMOTE, (), stats)
    return Verdict(KEEP, (), stats)
