"""Stubs for the compiled drift statistics kernel (ext/_drift.pyx); semantics in ext._reference."""

import numpy as np
import numpy.typing as npt

from ext._results import WindowStats

__all__ = ["WindowStats", "window_stats"]

def window_stats(
    x: npt.NDArray[np.uint8] | npt.NDArray[np.int8] | npt.NDArray[np.float32],
    channels: int,
    lo: float,
    hi: float,
    bins: int,
) -> WindowStats: ...
