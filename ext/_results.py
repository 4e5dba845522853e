"""Result types returned by both implementations."""

from typing import NamedTuple

import numpy as np


class Confidence(NamedTuple):
    """Per-row confidence measures of a probability batch; each field is float32 ``[N]``."""

    max_prob: np.ndarray
    """Top-1 probability."""
    margin: np.ndarray
    """Top-1 minus top-2 probability (equals ``max_prob`` when K == 1)."""
    entropy: np.ndarray
    """Shannon entropy in nats, with 0 * log 0 = 0."""
    normalized_entropy: np.ndarray
    """``entropy / ln K`` in [0, 1] for valid distributions; 0 when K == 1."""


class WindowStats(NamedTuple):
    """Statistics of a batch of values for drift monitoring (``ext.window_stats``).

    Counts and sums add up over batches, so a rolling window is the sum of its batches.
    """

    count: np.ndarray
    """int64 ``[C]``: finite values per channel (NaN and +-inf are skipped)."""
    total: np.ndarray
    """float64 ``[C]``: sum of the finite values per channel."""
    total_sq: np.ndarray
    """float64 ``[C]``: sum of their squares per channel."""
    histogram: np.ndarray
    """int64 ``[bins]``: finite values per bin over all channels."""
