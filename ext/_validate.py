"""Argument checks shared by the NumPy reference and the Cython kernels.

Both implementations call these functions first, so they accept and reject
exactly the same inputs with the same messages. Every message starts with the
argument's name. Wrong Python types raise TypeError; wrong dtype, rank, size or
value raise ValueError.
"""

import functools
import math
import operator
from collections.abc import Sequence

import numpy as np

QUANT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8))
OUTPUT_DTYPES = (*QUANT_DTYPES, np.dtype(np.float32))

# Sizes above this would overflow the int32 index tables of the resize kernel.
MAX_SIZE = 1 << 30


def _array(value: object, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected numpy.ndarray, got {type(value).__name__}")
    return value


def _contiguous(value: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)."""
    return value if value.flags.c_contiguous else value.copy(order="C")


def _dtype(value: np.ndarray, name: str, allowed: Sequence[np.dtype]) -> None:
    if value.dtype not in allowed:
        names = " or ".join(str(d) for d in allowed)
        raise ValueError(f"{name}: dtype must be {names}, got {value.dtype}")


def images(value: object, name: str = "images") -> np.ndarray:
    """Return uint8 ``[N,H,W]`` or ``[N,H,W,C]`` as a C-contiguous 4-D array (C=1 for 3-D)."""
    arr = _array(value, name)
    _dtype(arr, name, (np.dtype(np.uint8),))
    if arr.ndim not in (3, 4):
        raise ValueError(f"{name}: expected shape [N,H,W] or [N,H,W,C], got ndim {arr.ndim}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (N == 0)")
    if 0 in arr.shape[1:]:
        raise ValueError(f"{name}: zero-sized dimension in shape {arr.shape}")
    if max(arr.shape[1:3]) > MAX_SIZE:
        raise ValueError(f"{name}: height/width above {MAX_SIZE}")
    if arr.ndim == 3:
        arr = arr[..., np.newaxis]
    return _contiguous(arr)


def _int(value: object, name: str) -> int:
    """``value`` as a Python int: any integer type but bool, else TypeError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected int, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected int, got {type(value).__name__}") from None


def size(value: object, name: str) -> int:
    """Return a positive int output size."""
    result = _int(value, name)
    if not 1 <= result <= MAX_SIZE:
        raise ValueError(f"{name}: must be in [1, {MAX_SIZE}], got {result}")
    return result


def _finite_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name}: must be finite, got {result}")
    return result


# Values strictly inside these bounds stay finite and > 0 as float32 (its largest finite
# value is ~3.4028e38, its smallest subnormal ~1.4e-45); only values outside them are
# rounded to float32 to decide, which costs ~2 us a call (np.errstate).
_F32_SURELY_POSITIVE = (1e-44, 3.4e38)


def positive(value: object, name: str) -> float:
    """Return a float that stays finite and > 0 after rounding to float32."""
    result = _finite_float(value, name)
    if _F32_SURELY_POSITIVE[0] < result < _F32_SURELY_POSITIVE[1]:
        return result
    with np.errstate(over="ignore"):  # overflow to inf is rejected just below
        as_f32 = np.float32(result)
    if not (result > 0 and as_f32 > 0 and np.isfinite(as_f32)):
        raise ValueError(f"{name}: must be > 0 and representable as float32, got {result}")
    return result


def quant_dtype(value: object, name: str = "dtype", allow_float: bool = False) -> np.dtype:
    """Return np.dtype(int8|uint8), or float32 too when ``allow_float``."""
    allowed = OUTPUT_DTYPES if allow_float else QUANT_DTYPES
    try:
        dt = np.dtype(value)
    except TypeError:
        raise TypeError(f"{name}: expected a numpy dtype, got {value!r}") from None
    if dt not in allowed:
        names = ", ".join(str(d) for d in allowed)
        raise ValueError(f"{name}: must be one of {names}, got {dt}")
    return dt


def zero_point(value: object, dtype: np.dtype, name: str = "zero_point") -> int:
    """Return an int zero point inside the range of ``dtype``."""
    result = _int(value, name)
    low, high = _integer_range(dtype)
    if not low <= result <= high:
        raise ValueError(f"{name}: must be in [{low}, {high}] for {dtype}, got {result}")
    return result


@functools.lru_cache(maxsize=16)
def _integer_range(dtype: np.dtype) -> tuple[int, int]:
    """``(min, max)`` of an integer dtype (np.iinfo costs ~3 us a call)."""
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def channel_params(mean: object, std: object) -> tuple[np.ndarray, np.ndarray]:
    """Return float32 ``mean`` and ``std`` of one common length (1 broadcasts)."""
    out = []
    for value, name in ((mean, "mean"), (std, "std")):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected a sequence of numbers, got {value!r}") from None
        if arr.ndim > 1:
            raise ValueError(f"{name}: expected a 1-D sequence, got shape {arr.shape}")
        arr = np.atleast_1d(arr)
        if arr.size == 0:
            raise ValueError(f"{name}: must not be empty")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: values must be finite")
        out.append(arr.astype(np.float32))
    mean32, std32 = out
    if not np.all(std32 > 0):
        raise ValueError("std: values must be > 0 (after rounding to float32)")
    if mean32.size != std32.size and 1 not in (mean32.size, std32.size):
        raise ValueError(f"mean/std: lengths {mean32.size} and {std32.size} do not broadcast")
    length = max(mean32.size, std32.size)
    return (
        np.ascontiguousarray(np.broadcast_to(mean32, (length,))),
        np.ascontiguousarray(np.broadcast_to(std32, (length,))),
    )


def channels_match(params: np.ndarray, channels: int, name: str = "mean/std") -> np.ndarray:
    """Broadcast per-channel rows (length 1 or ``channels``) to ``channels``."""
    if params.shape[0] not in (1, channels):
        raise ValueError(f"{name}: length {params.shape[0]} does not match {channels} channels")
    return np.ascontiguousarray(np.broadcast_to(params, (channels, *params.shape[1:])))


def float_array(value: object, name: str = "x") -> np.ndarray:
    """Return a C-contiguous float32 array of any shape."""
    arr = _array(value, name)
    _dtype(arr, name, (np.dtype(np.float32),))
    return _contiguous(arr)


def quantized_array(value: object, name: str = "q") -> np.ndarray:
    """Return a C-contiguous int8/uint8 array of any shape."""
    arr = _array(value, name)
    _dtype(arr, name, QUANT_DTYPES)
    return _contiguous(arr)


def scores(value: object, name: str, allow_quantized: bool = False) -> np.ndarray:
    """Return a C-contiguous ``[N,K]`` float32 (or int8/uint8) array with N, K >= 1."""
    arr = _array(value, name)
    _dtype(arr, name, OUTPUT_DTYPES if allow_quantized else (np.dtype(np.float32),))
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected shape [N,K], got ndim {arr.ndim}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (N == 0)")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: zero classes (K == 0)")
    return _contiguous(arr)


def quant_params(scale: object, zero_point_value: object, dtype: np.dtype) -> tuple[float, int]:
    """Validate ``scale`` and ``zero_point`` for ``dtype``."""
    return positive(scale, "scale"), zero_point(zero_point_value, dtype)


def boxes(value: object, name: str = "boxes", width: int = 4) -> np.ndarray:
    """Return a C-contiguous float32 ``[M, >=width]`` array (M may be 0)."""
    arr = _array(value, name)
    _dtype(arr, name, (np.dtype(np.float32),))
    if arr.ndim != 2 or arr.shape[1] < width:
        raise ValueError(f"{name}: expected shape [M,{width}] (or more columns), "
                         f"got {list(arr.shape)}")
    return _contiguous(arr)


def box_scores(value: object, count: int, name: str = "scores") -> np.ndarray:
    """Return a C-contiguous float32 ``[count]`` array."""
    arr = _array(value, name)
    _dtype(arr, name, (np.dtype(np.float32),))
    if arr.shape != (count,):
        raise ValueError(f"{name}: expected shape [{count}] (one per box), got {list(arr.shape)}")
    return _contiguous(arr)


def unit_interval(value: object, name: str) -> float:
    """Return a finite float in [0, 1]."""
    result = _finite_float(value, name)
    if not 0.0 <= result <= 1.0:
        raise ValueError(f"{name}: must be in [0, 1], got {result}")
    return result


def count(value: object, name: str) -> int:
    """Return an int >= 0."""
    result = _int(value, name)
    if result < 0:
        raise ValueError(f"{name}: must be >= 0, got {result}")
    return result


def box_scale(value: object, name: str = "scale") -> tuple[float, float, float, float]:
    """Return four positive finite floats ``(x, y, w, h)``."""
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{name}: expected 4 numbers, got {value!r}") from None
    if len(items) != 4:
        raise ValueError(f"{name}: expected 4 numbers (x, y, w, h), got {len(items)}")
    x, y, w, h = (positive(v, f"{name}[{i}]") for i, v in enumerate(items))
    return x, y, w, h


STATS_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.float32))
MAX_BINS = 4096


def stats_args(value: object, channels: object, lo: object, hi: object,
               bins: object) -> tuple[np.ndarray, int, float, float, int]:
    """Return ``(x as C-contiguous uint8/int8/float32, channels, lo, hi, bins)`` for
    ``window_stats``: ``x.size`` a multiple of ``channels``, ``lo < hi`` finite, ``bins`` in
    [1, MAX_BINS]."""
    arr = _array(value, "x")
    _dtype(arr, "x", STATS_DTYPES)
    c = _int(channels, "channels")
    if c < 1:
        raise ValueError(f"channels: must be >= 1, got {c}")
    if arr.size % c:
        raise ValueError(f"x: {arr.size} values do not split into {c} channels")
    low, high = _finite_float(lo, "lo"), _finite_float(hi, "hi")
    if not low < high:
        raise ValueError(f"lo/hi: need lo < hi, got {low} and {high}")
    if not math.isfinite(high - low):
        raise ValueError(f"lo/hi: range {low}..{high} is too wide")
    n = _int(bins, "bins")
    if not 1 <= n <= MAX_BINS:
        raise ValueError(f"bins: must be in [1, {MAX_BINS}], got {n}")
    return _contiguous(arr).reshape(-1), c, low, high, n
