"""Drift statistics kernel: per-channel counts, sums, sums of squares and a histogram.

The specification is ext._reference.window_stats; argument checks are ext._validate.
One pass over contiguous memory with the GIL released. For the 8-bit dtypes the pass
only counts each of the 256 codes per channel; exact integer sums and the histogram (each
code binned with the reference's formula) come from those counts.
"""

from libc.math cimport floor
from libc.stdint cimport int8_t, int64_t, uint8_t

import numpy as np

from ext import _validate
from ext._results import WindowStats

__all__ = ["WindowStats", "window_stats"]

ctypedef fused code_t:
    int8_t
    uint8_t


cdef inline Py_ssize_t _bin(double v, double lo, double scale, Py_ssize_t bins) noexcept nogil:
    cdef double t = floor((v - lo) * scale)
    if t < 0.0:
        return 0
    if t > <double>(bins - 1):
        return bins - 1
    return <Py_ssize_t>t


cdef inline void _stats8(const code_t* x, Py_ssize_t n, Py_ssize_t c, double lo,
                         double scale, Py_ssize_t bins, int64_t* codes, int64_t* count,
                         int64_t* isum, int64_t* isq, int64_t* hist) noexcept nogil:
    """Integer codes: count each code per channel (``codes``: ``[max(c, 4), 256]``,
    zeroed), then
    derive the exact sums and the histogram from the counts."""
    cdef Py_ssize_t i, ch, code, b
    cdef Py_ssize_t offset = 0
    cdef int64_t v, k
    if code_t is int8_t:
        offset = 128
    if c == 1:
        # four tables in turn: a run of equal codes (an image's background) does not
        # wait on one counter's previous increment; summed into the first table below
        i = 0
        while i + 4 <= n:
            codes[<Py_ssize_t>x[i] + offset] += 1
            codes[256 + <Py_ssize_t>x[i + 1] + offset] += 1
            codes[512 + <Py_ssize_t>x[i + 2] + offset] += 1
            codes[768 + <Py_ssize_t>x[i + 3] + offset] += 1
            i += 4
        while i < n:
            codes[<Py_ssize_t>x[i] + offset] += 1
            i += 1
        for code in range(256):
            codes[code] += codes[256 + code] + codes[512 + code] + codes[768 + code]
    else:
        i = 0
        while i < n:
            for ch in range(c):
                codes[ch * 256 + <Py_ssize_t>x[i + ch] + offset] += 1
            i += c
    for ch in range(c):
        count[ch] = n // c
        for code in range(256):
            k = codes[ch * 256 + code]
            if k == 0:
                continue
            v = code - offset
            isum[ch] += v * k
            isq[ch] += v * v * k
            b = _bin(<double>v, lo, scale, bins)
            hist[b] += k


cdef inline void _stats_float(const float* x, Py_ssize_t n, Py_ssize_t c, double lo,
                              double scale, Py_ssize_t bins, int64_t* count, double* total,
                              double* total_sq, int64_t* hist) noexcept nogil:
    cdef Py_ssize_t i, ch = 0
    cdef double d
    cdef float v
    for i in range(n):
        v = x[i]
        if v == v and v - v == 0.0:  # finite: NaN and +-inf are skipped
            d = v
            count[ch] += 1
            total[ch] += d
            total_sq[ch] += d * d
            hist[_bin(d, lo, scale, bins)] += 1
        ch += 1
        if ch == c:
            ch = 0


def window_stats(x, channels, lo, hi, bins):
    """``WindowStats(count, total, total_sq, histogram)`` of ``x``; see ext._reference."""
    arr, c, low, high, nbins = _validate.stats_args(x, channels, lo, hi, bins)
    count = np.zeros(c, dtype=np.int64)
    total = np.zeros(c, dtype=np.float64)
    total_sq = np.zeros(c, dtype=np.float64)
    hist = np.zeros(nbins, dtype=np.int64)
    isum = np.zeros(c, dtype=np.int64)
    isq = np.zeros(c, dtype=np.int64)
    codes = np.zeros(max(c, 4) * 256, dtype=np.int64)
    cdef int64_t[::1] cd = codes
    cdef int64_t[::1] cnt = count
    cdef double[::1] tot = total
    cdef double[::1] tsq = total_sq
    cdef int64_t[::1] h = hist
    cdef int64_t[::1] s8 = isum
    cdef int64_t[::1] q8 = isq
    cdef Py_ssize_t n = arr.shape[0]
    cdef Py_ssize_t cc = c
    cdef Py_ssize_t nb = nbins
    cdef double lo_d = low
    cdef double scale = float(nbins) / (high - low)
    cdef const uint8_t[::1] u8
    cdef const int8_t[::1] i8
    cdef const float[::1] f32
    if n == 0:
        return WindowStats(count, total, total_sq, hist)
    if arr.dtype == np.uint8:
        u8 = arr
        with nogil:
            _stats8(&u8[0], n, cc, lo_d, scale, nb, &cd[0], &cnt[0], &s8[0], &q8[0], &h[0])
    elif arr.dtype == np.int8:
        i8 = arr
        with nogil:
            _stats8(&i8[0], n, cc, lo_d, scale, nb, &cd[0], &cnt[0], &s8[0], &q8[0], &h[0])
    else:
        f32 = arr
        with nogil:
            _stats_float(&f32[0], n, cc, lo_d, scale, nb, &cnt[0], &tot[0], &tsq[0], &h[0])
        return WindowStats(count, total, total_sq, hist)
    return WindowStats(count, isum.astype(np.float64), isq.astype(np.float64), hist)
