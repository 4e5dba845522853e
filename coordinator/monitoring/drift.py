"""Drift of a model's inputs and confidences: a window of served items against the
reference profile of the model version's calibration data. Pure: statistics in, a
reading out.

Both sides are histograms on the same bins (the profile's; nodes bin their windows on
them, ``edge_node.drift``) plus per-channel counts, sums and sums of squares.

**Population stability index** (PSI) between the reference proportions ``e_i`` and the
window proportions ``a_i`` of each bin::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

computed, as usual, on bins that each hold a fair share of the reference (deciles or
ventiles of the reference population): the histogram's fine bins are first merged, left to
right, into groups of at least ``MIN_GROUP_SHARE`` (5 %) of the reference (a remainder
below it joins the last group). Then the standard epsilon handling: a proportion of 0 (an
empty group, where the log is undefined) is replaced by ``PSI_EPSILON`` (1e-4) before the
sum. Without the merging, the many nearly empty bins of a peaked distribution (the
confidences of a good classifier: 92 % of the shipped calibration split in the top
twentieth) turn sampling noise into PSI above 0.2 for windows of a few hundred unshifted
items. PSI is the symmetrised
Kullback-Leibler divergence of the two binned distributions (Jeffreys divergence), >= 0.
Rules of thumb from credit scoring, where it comes from (Siddiqi, *Credit Risk
Scorecards*, Wiley 2006; Yurdakul, *Statistical Properties of the Population Stability
Index*, 2018): below 0.1 no significant shift, 0.1 to 0.25 a moderate shift worth a look,
above 0.25 a significant shift. Yurdakul also shows PSI's sampling noise grows with the
number of bins and shrinks with the sample sizes: ``(B - 1) (1/n + 1/m)`` is about its
expected value with no shift at all, which is why a window needs ``min_items`` before
it is judged.

**Kolmogorov-Smirnov statistic** on the binned distributions: the largest distance
between the two cumulative distributions at the bin edges, ``max_k |A_k - E_k|`` in
[0, 1] (on bins it is a lower bound of the KS statistic of the raw values).

**Mean shift** per input channel: ``(window mean - reference mean) / reference std``
(reference std 0: the plain difference).

Failure behaviour: histograms of different lengths (a window binned on another profile)
raise ``ValueError``; an empty side gives no reading (None), never an exception or NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PSI_EPSILON = 1e-4
MIN_GROUP_SHARE = 0.05  # of the reference, per group of bins PSI is computed on
PSI_MODERATE = 0.1  # rules of thumb (see the module docstring)
PSI_SIGNIFICANT = 0.25
FEATURES = ("input", "confidence")


@dataclass(frozen=True)
class Stats:
    """Statistics of ``items`` items (a reference profile or a window): per input channel
    ``count`` values, their ``total`` and ``total_sq``; ``input`` and ``confidence``
    histograms (``confidence`` empty: none)."""

    items: int
    count: tuple[int, ...]
    total: tuple[float, ...]
    total_sq: tuple[float, ...]
    input: tuple[int, ...]
    confidence: tuple[int, ...] = ()


@dataclass(frozen=True)
class Thresholds:
    """When a window counts as drifted: PSI at or above ``psi_warn`` or KS at or above
    ``ks_warn`` on either feature, once the window holds ``min_items`` items."""

    psi_warn: float = 0.2
    ks_warn: float = 0.2
    min_items: int = 100


@dataclass(frozen=True)
class Reading:
    """The drift of one window: PSI and KS per feature (absent when a side has no data),
    the mean shift per input channel, and whether it crosses the thresholds (``drifted``,
    with ``reasons``); ``judged`` is False while the window is below ``min_items``."""

    items: int
    psi: dict[str, float]
    ks: dict[str, float]
    mean_shift: tuple[float, ...]
    judged: bool
    drifted: bool
    reasons: tuple[str, ...]


def proportions(counts: Sequence[int]) -> np.ndarray | None:
    """``counts`` as proportions summing to 1 (float64); None when they sum to 0."""
    arr = np.asarray(counts, dtype=np.float64)
    total = arr.sum()
    return arr / total if total > 0 else None


def groups(reference: Sequence[int], min_share: float = MIN_GROUP_SHARE) -> np.ndarray:
    """Start index of each group of adjacent bins holding at least ``min_share`` of the
    ``reference`` counts (a last remainder below it joins the group before)."""
    e = proportions(reference)
    if e is None:
        return np.zeros(1, dtype=np.int64)
    starts, share = [0], 0.0
    for i, p in enumerate(e):
        if share >= min_share:
            starts.append(i)
            share = 0.0
        share += p
    if len(starts) > 1 and share < min_share:
        starts.pop()
    return np.asarray(starts, dtype=np.int64)


def psi(reference: Sequence[int], window: Sequence[int],
        epsilon: float = PSI_EPSILON, min_share: float = MIN_GROUP_SHARE) -> float | None:
    """Population stability index of ``window`` against ``reference`` (bin counts), on
    groups of bins of at least ``min_share`` of the reference; None when either is empty."""
    e, a = _pair(reference, window)
    if e is None or a is None:
        return None
    starts = groups(reference, min_share)
    e, a = np.add.reduceat(e, starts), np.add.reduceat(a, starts)
    e = np.where(e > 0, e, epsilon)
    a = np.where(a > 0, a, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(reference: Sequence[int], window: Sequence[int]) -> float | None:
    """The largest distance between the two binned cumulative distributions; None when
    either is empty."""
    e, a = _pair(reference, window)
    if e is None or a is None:
        return None
    return float(np.max(np.abs(np.cumsum(a) - np.cumsum(e))))


def _pair(reference, window):
    if len(reference) != len(window):
        raise ValueError(f"histograms of {len(reference)} and {len(window)} bins: a window "
                         "must be binned on its reference's bins")
    return proportions(reference), proportions(window)


def mean_shift(reference: Stats, window: Stats) -> tuple[float, ...]:
    """Per channel: (window mean - reference mean) / reference std; 0 for a channel
    either side has no values of."""
    out = []
    for rc, rt, rq, wc, wt in zip(reference.count, reference.total, reference.total_sq,
                                  window.count, window.total, strict=False):
        if not rc or not wc:
            out.append(0.0)
            continue
        mean = rt / rc
        std = math.sqrt(max(0.0, rq / rc - mean * mean))
        diff = wt / wc - mean
        out.append(diff / std if std > 0 else diff)
    return tuple(out)


def merge(windows: Sequence[Stats]) -> Stats:
    """The windows of several nodes as one (sums of everything); at least one."""
    first = windows[0]
    if len(windows) == 1:
        return first

    def add(field: str) -> tuple:
        arrays = [np.asarray(getattr(w, field)) for w in windows if len(getattr(w, field))]
        if not arrays:
            return ()
        if any(a.shape != arrays[0].shape for a in arrays):
            raise ValueError(f"{field}: windows binned differently cannot be merged")
        return tuple(np.sum(arrays, axis=0).tolist())

    return Stats(sum(w.items for w in windows), add("count"), add("total"), add("total_sq"),
                 add("input"), add("confidence"))


def assess(reference: Stats, window: Stats, thresholds: Thresholds) -> Reading:
    """The ``Reading`` of ``window`` against ``reference``."""
    psis, kss = {}, {}
    for feature in FEATURES:
        ref, win = getattr(reference, feature), getattr(window, feature)
        if not ref or not win:
            continue
        p, k = psi(ref, win), ks_statistic(ref, win)
        if p is not None and k is not None:
            psis[feature], kss[feature] = p, k
    judged = window.items >= thresholds.min_items
    reasons = []
    if judged:
        for feature in FEATURES:
            if psis.get(feature, 0.0) >= thresholds.psi_warn:
                reasons.append(f"{feature} PSI {psis[feature]:.3f} >= {thresholds.psi_warn:g}")
            if kss.get(feature, 0.0) >= thresholds.ks_warn:
                reasons.append(f"{feature} KS {kss[feature]:.3f} >= {thresholds.ks_warn:g}")
    return Reading(window.items, psis, kss, mean_shift(reference, window), judged,
                   bool(reasons), tuple(reasons))
