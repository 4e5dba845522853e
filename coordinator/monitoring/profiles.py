"""Making a model version's drift reference profile from its calibration data.

The profile (``edgeshard.profile``) holds what nodes measure on the items they serve
(``edge_node.drift``): per-channel count, mean and (population) standard deviation of the
input values, their histogram, and the histogram of top-1 confidences. All are computed
with the same kernel as on the nodes, ``ext.window_stats``, on the inputs exactly as
clients send them, so a window and its reference differ only by the data.

Bins: the 8-bit dtypes cover their whole range (uint8 ``[0, 256)``, int8 ``[-128, 128)``);
float32 the range of the calibration data (later values outside it fall in the end
bins). Confidences cover ``[0, 1]``.
"""

from __future__ import annotations

import math

import numpy as np

import ext
from edgeshard.profile import DriftProfile, Histogram, InputStats

DEFAULT_BINS = 32
DEFAULT_CONFIDENCE_BINS = 20
RANGES = {np.dtype(np.uint8): (0.0, 256.0), np.dtype(np.int8): (-128.0, 128.0)}


def channels_of(x: np.ndarray) -> int:
    """Channels of an input batch: the last axis of a 4-D (NHWC) batch, else 1."""
    return int(x.shape[-1]) if x.ndim == 4 else 1


def build_profile(x: np.ndarray, confidences: np.ndarray | None, *,
                  bins: int = DEFAULT_BINS, confidence_bins: int = DEFAULT_CONFIDENCE_BINS,
                  temperature: float = 1.0, source: str = "") -> DriftProfile:
    """The reference profile of inputs ``x`` ``[N, ...]`` (uint8, int8 or float32) and
    their top-1 ``confidences`` ``[N]`` (None: not a classifier), made at softmax
    ``temperature``. Raises ``ValueError`` naming the argument."""
    if x.dtype not in (np.uint8, np.int8, np.float32):
        raise ValueError(f"x: inputs of dtype {x.dtype} cannot be profiled (uint8, int8 or "
                         "float32)")
    if x.ndim < 1 or len(x) == 0:
        raise ValueError("x: no examples to profile")
    if not 2 <= bins <= 1024:
        raise ValueError(f"--bins: must be in 2..1024, got {bins}")
    if not 2 <= confidence_bins <= 1024:
        raise ValueError(f"--confidence-bins: must be in 2..1024, got {confidence_bins}")
    if x.dtype in RANGES:
        lo, hi = RANGES[x.dtype]
    else:
        finite = x[np.isfinite(x)]
        if finite.size == 0:
            raise ValueError("x: no finite values to profile")
        lo, hi = float(finite.min()), float(finite.max())
        if hi <= lo:  # one value: any range around it (the maximum lands in the last bin,
            hi = lo + 1.0  # as every value at or above hi does)
    channels = channels_of(x)
    stats = ext.window_stats(np.ascontiguousarray(x), channels, lo, hi, bins)
    count = stats.count.astype(np.float64)
    mean = np.divide(stats.total, count, out=np.zeros_like(count), where=count > 0)
    var = np.divide(stats.total_sq, count, out=np.zeros_like(count), where=count > 0) - mean**2
    conf = None
    if confidences is not None:
        if len(confidences) != len(x):
            raise ValueError(f"confidences: {len(confidences)} for {len(x)} examples")
        c = ext.window_stats(np.ascontiguousarray(confidences, np.float32), 1, 0.0, 1.0,
                             confidence_bins)
        conf = Histogram(0.0, 1.0, tuple(int(v) for v in c.histogram))
    return DriftProfile(
        len(x),
        InputStats(str(x.dtype), channels, tuple(int(v) for v in stats.count),
                   tuple(_round(v) for v in mean),
                   tuple(_round(math.sqrt(max(0.0, v))) for v in var),
                   Histogram(lo, hi, tuple(int(v) for v in stats.histogram))),
        conf, float(temperature), source)


def _round(value: float) -> float:
    """Ten significant digits: plenty for a reference, and a readable file."""
    return float(f"{value:.10g}")
