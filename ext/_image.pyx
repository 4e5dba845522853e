"""Image kernels: bilinear resize, normalize, (de)quantize and the fused preprocess.

The specification is ext._reference; argument checks are ext._validate, shared
with the reference so both accept and reject the same inputs. Each ``def``
wrapper validates, allocates the result, then runs a ``noexcept nogil`` worker
with the GIL released.
"""

from libc.math cimport floor
from libc.stdint cimport int8_t, int32_t, uint8_t
from libc.stdlib cimport calloc, free, malloc

import functools

import numpy as np

from ext import _validate
from ext._reference import make_lut
from ext._reference import _lut as _build_lut

__all__ = [
    "SIMD", "SIMD_VARIANTS", "dequantize", "make_lut", "normalize", "preprocess", "quantize",
    "resize_bilinear", "use_simd",
]

ctypedef fused out_t:
    int8_t
    uint8_t
    float

ctypedef fused quant_t:
    int8_t
    uint8_t

cdef enum:
    WEIGHT_BITS = 11   # fixed-point bilinear weights in [0, 2048]
    WEIGHT_ONE = 2048
    SHIFT = 22         # two weight factors
    ROUND = 1 << 21

# float32(1.5 * 2**23): adding and subtracting it rounds |y| < 2**22 to an integer, ties to even.
cdef float ROUNDING_MAGIC = 12582912.0


@functools.lru_cache(maxsize=16)
def _identity_lut(Py_ssize_t channels):
    """Identity rows: with them the plain resize shares the preprocess kernel at ~no cost."""
    lut = np.tile(np.arange(256, dtype=np.uint8), (channels, 1))
    lut.setflags(write=False)
    return lut


@functools.lru_cache(maxsize=64)
def _cached_lut(bytes mean, bytes std, scale, zero_point, str dtype_char):
    """make_lut for validated parameters; a service calls preprocess with the same few."""
    lut = _build_lut(np.frombuffer(mean, np.float32), np.frombuffer(std, np.float32),
                     scale, zero_point, np.dtype(dtype_char))
    lut.setflags(write=False)
    return lut


cdef inline void _axis_table(Py_ssize_t in_size, Py_ssize_t out_size, Py_ssize_t stride,
                             Py_ssize_t* i0s, Py_ssize_t* i1s, int32_t* ws) noexcept nogil:
    """Per output index: ``i0 * stride``, ``i1 * stride`` and the weight of ``i1`` (see
    ext._reference.axis_table; same float64 operations in the same order)."""
    cdef double ratio = <double>in_size / <double>out_size
    cdef double src, frac
    cdef Py_ssize_t d, i0, i1
    for d in range(out_size):
        src = (<double>d + 0.5) * ratio - 0.5
        if src < 0.0:
            src = 0.0
        i0 = <Py_ssize_t>floor(src)
        frac = src - <double>i0
        if i0 >= in_size - 1:
            i0 = in_size - 1
            frac = 0.0
        i1 = i0 + 1 if i0 + 1 < in_size else in_size - 1
        i0s[d] = i0 * stride
        i1s[d] = i1 * stride
        ws[d] = <int32_t>floor(frac * 2048.0 + 0.5)


cdef extern from "_resize_kernels.h" nogil:
    const char* es_select(const char* name)
    int es_supported(const char** out, int size)
    void es_vertical(const uint8_t* r0, const uint8_t* r1, int32_t w, int32_t* col,
                     Py_ssize_t n)
    void es_horizontal3_i8(const int32_t* col, const Py_ssize_t* x0, const int32_t* wx,
                           Py_ssize_t pixels, const int8_t* lut, int8_t* dst)
    void es_horizontal3_u8(const int32_t* col, const Py_ssize_t* x0, const int32_t* wx,
                           Py_ssize_t pixels, const uint8_t* lut, uint8_t* dst)
    void es_horizontal3_f32(const int32_t* col, const Py_ssize_t* x0, const int32_t* wx,
                            Py_ssize_t pixels, const float* lut, float* dst)


def _supported():
    cdef const char* names[8]
    cdef int count = es_supported(names, 8)
    return tuple(names[i].decode("ascii") for i in range(count))


SIMD_VARIANTS = _supported()
"""The instruction sets this CPU can run the resize kernels with, best first: on x86-64
``avx512``, ``avx2``, ``sse2``; on arm64 ``neon``; else ``generic``."""

SIMD = es_select(NULL).decode("ascii")
"""The instruction set the resize kernels run with: the best of ``SIMD_VARIANTS``, chosen
when the module loads (``use_simd`` changes it)."""


def use_simd(name=None):
    """Run the resize kernels with the instruction set ``name`` (one of ``SIMD_VARIANTS``;
    None: the best), for benchmarks and tests; returns it. Every variant gives the same
    results. ``ValueError`` naming the choices for another name."""
    global SIMD
    ok = isinstance(name, str) and name.isascii() and "\x00" not in name
    chosen = es_select(NULL) if name is None else (es_select(name.encode("ascii")) if ok
                                                   else NULL)
    if chosen == NULL:
        raise ValueError(f"name: {name!r} is not one of this CPU's {', '.join(SIMD_VARIANTS)}")
    SIMD = chosen.decode("ascii")
    return SIMD


cdef inline void _resize_lut(const uint8_t* src, Py_ssize_t n_images, Py_ssize_t in_h,
                             Py_ssize_t in_w, Py_ssize_t ch, Py_ssize_t out_h, Py_ssize_t out_w,
                             const Py_ssize_t* y0, const Py_ssize_t* y1, const int32_t* wy,
                             const Py_ssize_t* x0, const Py_ssize_t* x1, const int32_t* wx,
                             int32_t* col, const out_t* lut, out_t* dst) noexcept nogil:
    """Separable fixed-point bilinear resize, then ``dst = lut[c * 256 + pixel]``.

    The vertical pass runs first over whole input rows (contiguous, so it vectorizes);
    the horizontal pass then gathers from that row, 4 lanes at a time for 3 channels
    (ext/_resize_kernels.h; ``col`` has one readable value past the row). Integer
    arithmetic is exact, so neither the pass order nor the rewrite
    ``p0 * (2048 - w) + p1 * w == (p0 << 11) + (p1 - p0) * w`` (one multiply
    instead of two; every term fits in int32) changes the spec's result.
    """
    cdef Py_ssize_t row_len = in_w * ch
    cdef Py_ssize_t n, oy, ox, c
    cdef Py_ssize_t fast = 0  # leading output pixels whose x1 is x0's next pixel
    if ch == 3:
        while fast < out_w and x1[fast] == x0[fast] + 3:
            fast += 1
    cdef const uint8_t* image
    cdef const uint8_t* r0
    cdef const uint8_t* r1
    cdef const int32_t* p0
    cdef const int32_t* p1
    cdef int32_t b
    for n in range(n_images):
        image = src + n * in_h * row_len
        for oy in range(out_h):
            r0 = image + y0[oy] * row_len
            r1 = image + y1[oy] * row_len
            # compiled for AVX-512, AVX2 and SSE2, one chosen at import (ext/_resize_kernels.h)
            es_vertical(r0, r1, wy[oy], col, row_len)
            if ch == 3:
                # the pixels whose right neighbour is the next one: 4 lanes at a time
                if out_t is int8_t:
                    es_horizontal3_i8(col, x0, wx, fast, lut, dst)
                elif out_t is uint8_t:
                    es_horizontal3_u8(col, x0, wx, fast, lut, dst)
                else:
                    es_horizontal3_f32(col, x0, wx, fast, lut, dst)
                dst += 3 * fast
                for ox in range(fast, out_w):
                    b = wx[ox]
                    p0 = col + x0[ox]
                    p1 = col + x1[ox]
                    # constant row offsets keep one LUT base register (fewer spills)
                    dst[0] = lut[((p0[0] << WEIGHT_BITS) + (p1[0] - p0[0]) * b + ROUND) >> SHIFT]
                    dst[1] = lut[256 + (((p0[1] << WEIGHT_BITS) + (p1[1] - p0[1]) * b + ROUND)
                                        >> SHIFT)]
                    dst[2] = lut[512 + (((p0[2] << WEIGHT_BITS) + (p1[2] - p0[2]) * b + ROUND)
                                        >> SHIFT)]
                    dst += 3
            else:
                for ox in range(out_w):
                    b = wx[ox]
                    p0 = col + x0[ox]
                    p1 = col + x1[ox]
                    for c in range(ch):
                        dst[c] = lut[c * 256 + (((p0[c] << WEIGHT_BITS) + (p1[c] - p0[c]) * b
                                                 + ROUND) >> SHIFT)]
                    dst += ch


cdef inline void _lut_only(const uint8_t* src, Py_ssize_t pixels, Py_ssize_t ch,
                           const out_t* lut, out_t* dst) noexcept nogil:
    """``dst = lut[c * 256 + pixel]``: a same-size resize is the identity (ext._reference)."""
    cdef Py_ssize_t p, c
    if ch == 3:
        for p in range(pixels):
            dst[0] = lut[src[0]]
            dst[1] = lut[256 + src[1]]
            dst[2] = lut[512 + src[2]]
            src += 3
            dst += 3
    else:
        for p in range(pixels):
            for c in range(ch):
                dst[c] = lut[c * 256 + src[c]]
            src += ch
            dst += ch


cdef int _resize_into(const uint8_t[:, :, :, ::1] src, const out_t[:, ::1] lut,
                      out_t[:, :, :, ::1] dst) except -1:
    """Allocate the axis tables and column buffer, then run the worker without the GIL.

    ``lut`` holds one 256-entry row per channel. Images already of the output size only
    go through the LUT (a camera that sends the model's size: ~4x less work).
    """
    cdef Py_ssize_t n = src.shape[0], in_h = src.shape[1], in_w = src.shape[2]
    cdef Py_ssize_t ch = src.shape[3], out_h = dst.shape[1], out_w = dst.shape[2]
    if lut.shape[0] != ch or lut.shape[1] != 256:
        raise ValueError(f"lut: expected shape ({ch}, 256), got ({lut.shape[0]}, {lut.shape[1]})")
    if in_h == out_h and in_w == out_w:
        if n * in_h * in_w * ch:
            with nogil:
                _lut_only(&src[0, 0, 0, 0], n * in_h * in_w, ch, &lut[0, 0], &dst[0, 0, 0, 0])
        return 0
    cdef Py_ssize_t* index = <Py_ssize_t*>malloc((2 * out_h + 2 * out_w) * sizeof(Py_ssize_t))
    # + 4: the 3-channel horizontal pass reads one value past the column buffer's row
    cdef int32_t* weights = <int32_t*>calloc(out_h + out_w + in_w * ch + 4, sizeof(int32_t))
    if index == NULL or weights == NULL:
        free(index)
        free(weights)
        raise MemoryError("resize: cannot allocate tables")
    try:
        with nogil:
            _axis_table(in_h, out_h, 1, index, index + out_h, weights)
            _axis_table(in_w, out_w, ch, index + 2 * out_h, index + 2 * out_h + out_w,
                        weights + out_h)
            _resize_lut(&src[0, 0, 0, 0], n, in_h, in_w, ch, out_h, out_w,
                        index, index + out_h, weights,
                        index + 2 * out_h, index + 2 * out_h + out_w, weights + out_h,
                        weights + out_h + out_w, &lut[0, 0], &dst[0, 0, 0, 0])
    finally:
        free(index)
        free(weights)
    return 0


def resize_bilinear(images, out_h, out_w):
    """Bilinear resize, uint8 ``[N,H,W(,C)]`` -> ``[N,out_h,out_w(,C)]``; see ext._reference."""
    squeeze = isinstance(images, np.ndarray) and images.ndim == 3
    batch = _validate.images(images)
    oh = _validate.size(out_h, "out_h")
    ow = _validate.size(out_w, "out_w")
    out = np.empty((batch.shape[0], oh, ow, batch.shape[3]), dtype=np.uint8)
    cdef const uint8_t[:, ::1] lut = _identity_lut(batch.shape[3])
    cdef uint8_t[:, :, :, ::1] dst = out
    _resize_into[uint8_t](batch, lut, dst)
    return out.reshape(out.shape[:3]) if squeeze else out


_PLANS = {}  # (parameters as a typed key) -> (dtype, LUT) of preprocess calls already checked
_MAX_PLANS = 64


def _typed(value):
    """A hashable key for a preprocess parameter that tells apart what validation tells
    apart (1, 1.0 and True; a list and an array); TypeError when it cannot be hashed."""
    if isinstance(value, np.ndarray):
        return (np.ndarray, value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return (type(value), tuple((type(v), v) for v in value))
    hash(value)
    return (type(value), value)


def _plan(mean, std, scale, zero_point, dtype, Py_ssize_t channels):
    """The output dtype and LUT for these parameters: validated once, then remembered (a
    service calls preprocess with the same few; validating them took ~25 µs a call)."""
    try:
        key = (_typed(mean), _typed(std), _typed(scale), _typed(zero_point), _typed(dtype),
               channels)
    except TypeError:
        key = None
    if key is not None:
        plan = _PLANS.get(key)
        if plan is not None:
            return plan
    mean32, std32 = _validate.channel_params(mean, std)
    dt = _validate.quant_dtype(dtype, allow_float=True)
    mean32 = _validate.channels_match(mean32, channels)
    std32 = _validate.channels_match(std32, channels)
    if dt == np.float32:
        scale, zero_point = None, None
    else:
        scale, zero_point = _validate.quant_params(scale, zero_point, dt)
    plan = dt, _cached_lut(mean32.tobytes(), std32.tobytes(), scale, zero_point, dt.char)
    if key is not None and len(_PLANS) < _MAX_PLANS:
        _PLANS[key] = plan
    return plan


def preprocess(images, out_h, out_w, mean, std, scale, zero_point, dtype):
    """Fused resize + normalize + quantize (a per-channel LUT applied inside the resize)."""
    batch = _validate.images(images)
    oh = _validate.size(out_h, "out_h")
    ow = _validate.size(out_w, "out_w")
    channels = batch.shape[3]
    dt, table = _plan(mean, std, scale, zero_point, dtype, channels)
    out = np.empty((batch.shape[0], oh, ow, channels), dtype=dt)
    cdef const int8_t[:, ::1] lut_i8
    cdef const uint8_t[:, ::1] lut_u8
    cdef const float[:, ::1] lut_f32
    cdef int8_t[:, :, :, ::1] dst_i8
    cdef uint8_t[:, :, :, ::1] dst_u8
    cdef float[:, :, :, ::1] dst_f32
    if dt == np.int8:
        lut_i8 = table
        dst_i8 = out
        _resize_into[int8_t](batch, lut_i8, dst_i8)
    elif dt == np.uint8:
        lut_u8 = table
        dst_u8 = out
        _resize_into[uint8_t](batch, lut_u8, dst_u8)
    else:
        lut_f32 = table
        dst_f32 = out
        _resize_into[float](batch, lut_f32, dst_f32)
    return out


cdef inline void _normalize(const uint8_t* src, Py_ssize_t pixels, Py_ssize_t ch,
                            const float* mean, const float* std, float* dst) noexcept nogil:
    cdef float k255 = 255.0  # a float32 operand keeps the division in float32, as NumPy does
    cdef Py_ssize_t p, c
    for p in range(pixels):
        for c in range(ch):
            dst[c] = (<float>src[c] / k255 - mean[c]) / std[c]
        src += ch
        dst += ch


def normalize(images, mean, std):
    """``(x / 255 - mean[c]) / std[c]`` in float32, same shape as ``images``."""
    batch = _validate.images(images)
    mean32, std32 = _validate.channel_params(mean, std)
    channels = batch.shape[3]
    mean32 = _validate.channels_match(mean32, channels)
    std32 = _validate.channels_match(std32, channels)
    out = np.empty(images.shape, dtype=np.float32)
    cdef const uint8_t[:, :, :, ::1] src = batch
    cdef const float[::1] m = mean32
    cdef const float[::1] s = std32
    cdef float[::1] dst = out.reshape(-1)
    cdef Py_ssize_t pixels = batch.shape[0] * batch.shape[1] * batch.shape[2]
    cdef Py_ssize_t ch = channels
    with nogil:
        _normalize(&src[0, 0, 0, 0], pixels, ch, &m[0], &s[0], &dst[0])
    return out


cdef inline void _quantize(const float* x, Py_ssize_t size, float scale, int zp, int qmin,
                           int qmax, quant_t* dst) noexcept nogil:
    """Clamp before rounding (equivalent: the bounds are integers), then round half to even
    with the float32 magic-number trick, which avoids a libm call per element."""
    cdef float lo = <float>(qmin - zp)
    cdef float hi = <float>(qmax - zp)
    cdef float y
    cdef Py_ssize_t i
    for i in range(size):
        # selects, not branches, so the loop vectorizes
        y = x[i] / scale
        y = y if y == y else <float>0.0
        y = lo if y < lo else y
        y = hi if y > hi else y
        y = (y + ROUNDING_MAGIC) - ROUNDING_MAGIC
        dst[i] = <quant_t>(<int32_t>y + zp)


def quantize(x, scale, zero_point, dtype):
    """``clip(rint(x / float32(scale)) + zero_point)``; NaN -> zero_point; see ext._reference."""
    arr = _validate.float_array(x)
    dt = _validate.quant_dtype(dtype)
    scale_f, zp = _validate.quant_params(scale, zero_point, dt)
    out = np.empty(arr.shape, dtype=dt)
    if arr.size == 0:
        return out
    cdef const float[::1] src = arr.reshape(-1)
    cdef int8_t[::1] dst_i8
    cdef uint8_t[::1] dst_u8
    cdef float s = <float>scale_f
    cdef int z = zp
    cdef Py_ssize_t size = src.shape[0]
    if dt == np.int8:
        dst_i8 = out.reshape(-1)
        with nogil:
            _quantize(&src[0], size, s, z, -128, 127, &dst_i8[0])
    else:
        dst_u8 = out.reshape(-1)
        with nogil:
            _quantize(&src[0], size, s, z, 0, 255, &dst_u8[0])
    return out


cdef inline void _dequantize(const quant_t* q, Py_ssize_t size, float scale, float zp,
                             float* dst) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(size):
        dst[i] = (<float>q[i] - zp) * scale


def dequantize(q, scale, zero_point):
    """``(float32(q) - float32(zero_point)) * float32(scale)``; ``q`` int8/uint8, any shape."""
    arr = _validate.quantized_array(q)
    scale_f, zp = _validate.quant_params(scale, zero_point, arr.dtype)
    out = np.empty(arr.shape, dtype=np.float32)
    if arr.size == 0:
        return out
    cdef const int8_t[::1] src_i8
    cdef const uint8_t[::1] src_u8
    cdef float[::1] dst = out.reshape(-1)
    cdef float s = <float>scale_f
    cdef float z = <float>zp
    cdef Py_ssize_t size = dst.shape[0]
    if arr.dtype == np.int8:
        src_i8 = arr.reshape(-1)
        with nogil:
            _dequantize(&src_i8[0], size, s, z, &dst[0])
    else:
        src_u8 = arr.reshape(-1)
        with nogil:
            _dequantize(&src_u8[0], size, s, z, &dst[0])
    return out
