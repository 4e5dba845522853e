"""Stubs for the compiled image kernels (ext/_image.pyx); semantics in ext._reference."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_Params = float | Sequence[float] | npt.NDArray[np.floating]

__all__ = ["dequantize", "make_lut", "normalize", "preprocess", "quantize", "resize_bilinear"]

def resize_bilinear(
    images: npt.NDArray[np.uint8], out_h: int, out_w: int
) -> npt.NDArray[np.uint8]: ...
def normalize(
    images: npt.NDArray[np.uint8], mean: _Params, std: _Params
) -> npt.NDArray[np.float32]: ...
def quantize(
    x: npt.NDArray[np.float32], scale: float, zero_point: int, dtype: npt.DTypeLike
) -> npt.NDArray[np.int8] | npt.NDArray[np.uint8]: ...
def dequantize(
    q: npt.NDArray[np.int8] | npt.NDArray[np.uint8], scale: float, zero_point: int
) -> npt.NDArray[np.float32]: ...
def make_lut(
    mean: _Params, std: _Params, scale: float | None, zero_point: int | None, dtype: npt.DTypeLike
) -> np.ndarray: ...
def preprocess(
    images: npt.NDArray[np.uint8],
    out_h: int,
    out_w: int,
    mean: _Params,
    std: _Params,
    scale: float | None,
    zero_point: int | None,
    dtype: npt.DTypeLike,
) -> np.ndarray: ...
