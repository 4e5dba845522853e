"""Score kernels: softmax, confidence measures and the fused postprocess.

The specification is ext._reference; argument checks are ext._validate. Each
row is handled in one pass over contiguous memory with the GIL released.
"""

from libc.math cimport INFINITY, expf, log
from libc.stdint cimport int8_t, int64_t, uint8_t

import numpy as np

from ext import _validate
from ext._results import Confidence

__all__ = ["Confidence", "confidence", "postprocess", "softmax"]

ctypedef fused score_t:
    int8_t
    uint8_t
    float


cdef inline void _softmax_row(float* row, Py_ssize_t k, float row_max,
                              float temperature) noexcept nogil:
    """In place: ``exp((x - max) / t) / sum``; the sum runs in double."""
    cdef double total = 0.0
    cdef float e, denom
    cdef Py_ssize_t i
    for i in range(k):
        e = expf((row[i] - row_max) / temperature)
        row[i] = e
        total += e
    denom = <float>total
    for i in range(k):
        row[i] = row[i] / denom


cdef inline float _row_max(const float* row, Py_ssize_t k) noexcept nogil:
    """Row maximum; NaN if the row holds one (as np.max)."""
    cdef float best = row[0]
    cdef Py_ssize_t i
    for i in range(1, k):
        if row[i] != row[i]:
            return row[i]
        if row[i] > best:
            best = row[i]
    return best


cdef inline Py_ssize_t _argmax(const float* row, Py_ssize_t k) noexcept nogil:
    """First index of the maximum; the first NaN wins, as np.argmax."""
    cdef float best = row[0]
    cdef Py_ssize_t i, idx = 0
    if best != best:
        return 0
    for i in range(1, k):
        if row[i] != row[i]:
            return i
        if row[i] > best:
            best = row[i]
            idx = i
    return idx


cdef inline void _softmax(const float* src, Py_ssize_t n, Py_ssize_t k, float temperature,
                          float* dst) noexcept nogil:
    cdef Py_ssize_t r, i
    for r in range(n):
        for i in range(k):
            dst[i] = src[i]
        _softmax_row(dst, k, _row_max(dst, k), temperature)
        src += k
        dst += k


def softmax(logits, temperature=1.0):
    """Row-wise stable ``softmax(logits / temperature)``, float32 ``[N,K]``."""
    arr = _validate.scores(logits, "logits")
    t = _validate.positive(temperature, "temperature")
    out = np.empty(arr.shape, dtype=np.float32)
    cdef const float[:, ::1] src = arr
    cdef float[:, ::1] dst = out
    cdef float tf = <float>t
    with nogil:
        _softmax(&src[0, 0], src.shape[0], src.shape[1], tf, &dst[0, 0])
    return out


cdef inline void _confidence(const float* probs, Py_ssize_t n, Py_ssize_t k, float* max_prob,
                             float* margin, float* entropy, float* normalized) noexcept nogil:
    cdef double log_k = log(<double>k)
    cdef double h, p
    cdef float top1, top2, v
    cdef Py_ssize_t r, i
    for r in range(n):
        top1 = probs[0]
        top2 = -INFINITY
        h = 0.0
        for i in range(k):
            v = probs[i]
            if i > 0:
                if v > top1:
                    top2 = top1
                    top1 = v
                elif v > top2:
                    top2 = v
            if v > 0.0:
                p = v
                h -= p * log(p)
        max_prob[r] = top1
        margin[r] = top1 - top2 if k > 1 else top1
        entropy[r] = <float>h
        normalized[r] = <float>(h / log_k) if k > 1 else 0.0
        probs += k


def confidence(probs):
    """Per row: max_prob, top-1 minus top-2 margin, entropy (nats), entropy / ln K."""
    arr = _validate.scores(probs, "probs")
    n = arr.shape[0]
    max_prob = np.empty(n, dtype=np.float32)
    margin = np.empty(n, dtype=np.float32)
    entropy = np.empty(n, dtype=np.float32)
    normalized = np.empty(n, dtype=np.float32)
    cdef const float[:, ::1] src = arr
    cdef float[::1] mp = max_prob
    cdef float[::1] mg = margin
    cdef float[::1] en = entropy
    cdef float[::1] ne = normalized
    with nogil:
        _confidence(&src[0, 0], src.shape[0], src.shape[1], &mp[0], &mg[0], &en[0], &ne[0])
    return Confidence(max_prob, margin, entropy, normalized)


cdef inline void _postprocess(const score_t* src, Py_ssize_t n, Py_ssize_t k, float scale,
                              float zp, float temperature, bint apply_softmax, float* probs,
                              int64_t* labels, float* max_prob) noexcept nogil:
    """Per row: dequantize into ``probs``, argmax, softmax in place, pick the label's value."""
    cdef Py_ssize_t r, i, idx
    for r in range(n):
        for i in range(k):
            if score_t is float:
                probs[i] = src[i]
            else:
                probs[i] = (<float>src[i] - zp) * scale
        idx = _argmax(probs, k)
        labels[r] = idx
        if apply_softmax:
            _softmax_row(probs, k, _row_max(probs, k), temperature)
        max_prob[r] = probs[idx]
        src += k
        probs += k


def postprocess(outputs, scale, zero_point, temperature=1.0, apply_softmax=True):
    """``(probs, labels, max_prob)`` from int8/uint8/float32 outputs ``[N,K]``; see ext._reference."""
    arr = _validate.scores(outputs, "outputs", allow_quantized=True)
    cdef float s = 1.0
    cdef float z = 0.0
    if arr.dtype != np.float32:
        scale_f, zp = _validate.quant_params(scale, zero_point, arr.dtype)
        s = <float>scale_f
        z = <float>zp
    t = _validate.positive(temperature, "temperature")
    if not isinstance(apply_softmax, (bool, np.bool_)):
        raise TypeError(f"apply_softmax: expected bool, got {type(apply_softmax).__name__}")
    cdef Py_ssize_t n = arr.shape[0]
    cdef Py_ssize_t k = arr.shape[1]
    probs = np.empty((n, k), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    max_prob = np.empty(n, dtype=np.float32)
    cdef float[:, ::1] p = probs
    cdef int64_t[::1] lab = labels
    cdef float[::1] mp = max_prob
    cdef float tf = <float>t
    cdef bint do_softmax = bool(apply_softmax)
    cdef const int8_t[:, ::1] src_i8
    cdef const uint8_t[:, ::1] src_u8
    cdef const float[:, ::1] src_f32
    if arr.dtype == np.int8:
        src_i8 = arr
        with nogil:
            _postprocess(&src_i8[0, 0], n, k, s, z, tf, do_softmax, &p[0, 0], &lab[0], &mp[0])
    elif arr.dtype == np.uint8:
        src_u8 = arr
        with nogil:
            _postprocess(&src_u8[0, 0], n, k, s, z, tf, do_softmax, &p[0, 0], &lab[0], &mp[0])
    else:
        src_f32 = arr
        with nogil:
            _postprocess(&src_f32[0, 0], n, k, s, z, tf, do_softmax, &p[0, 0], &lab[0], &mp[0])
    return probs, labels, max_prob
