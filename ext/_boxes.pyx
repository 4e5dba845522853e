"""Box kernels: SSD box decoding and greedy non-maximum suppression.

The specification is ext._reference; argument checks are ext._validate. The loops run
with the GIL released; only the candidate ordering uses NumPy (a stable argsort, the
same call as the reference).
"""

from libc.math cimport NAN, isnan
from libc.stdint cimport int64_t

import numpy as np

from ext import _validate

__all__ = ["decode_boxes", "nms"]


def decode_boxes(raw, anchors, scale):
    """SSD box regressions -> ``[A,4]`` float32 ``(ymin, xmin, ymax, xmax)``; see the reference."""
    box = _validate.boxes(raw, "raw")
    anc = _validate.boxes(anchors, "anchors")
    if anc.shape != (box.shape[0], 4):
        raise ValueError(f"anchors: expected shape [{box.shape[0]},4], got {list(anc.shape)}")
    sx, sy, sw, sh = _validate.box_scale(scale)
    out = np.empty((box.shape[0], 4), dtype=np.float32)
    cdef const float[:, ::1] r = box
    cdef const float[:, ::1] a = anc
    cdef float[:, ::1] o = out
    cdef float fx = <float>sx, fy = <float>sy, fw = <float>sw, fh = <float>sh
    cdef float cx, cy, half_w, half_h
    cdef Py_ssize_t i
    with nogil:
        for i in range(r.shape[0]):
            cx = r[i, 0] / fx * a[i, 2] + a[i, 0]
            cy = r[i, 1] / fy * a[i, 3] + a[i, 1]
            half_w = r[i, 2] / fw * a[i, 2] / <float>2.0
            half_h = r[i, 3] / fh * a[i, 3] / <float>2.0
            o[i, 0] = cy - half_h
            o[i, 1] = cx - half_w
            o[i, 2] = cy + half_h
            o[i, 3] = cx + half_w
    return out


cdef inline double _min(double a, double b) noexcept nogil:
    """np.minimum: NaN if either is NaN."""
    if isnan(a) or isnan(b):
        return NAN
    return a if a < b else b


cdef inline double _max(double a, double b) noexcept nogil:
    """np.maximum: NaN if either is NaN."""
    if isnan(a) or isnan(b):
        return NAN
    return a if a > b else b


cdef inline double _area(const float[:, ::1] b, Py_ssize_t i) noexcept nogil:
    return (_max(0.0, <double>b[i, 2] - <double>b[i, 0])
            * _max(0.0, <double>b[i, 3] - <double>b[i, 1]))


cdef inline double _iou(const float[:, ::1] b, Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    cdef double ih = (_min(<double>b[i, 2], <double>b[j, 2])
                      - _max(<double>b[i, 0], <double>b[j, 0]))
    cdef double iw = (_min(<double>b[i, 3], <double>b[j, 3])
                      - _max(<double>b[i, 1], <double>b[j, 1]))
    cdef double inter = _max(0.0, ih) * _max(0.0, iw)
    cdef double union = _area(b, i) + _area(b, j) - inter
    if union > 0.0:
        return inter / union
    return 0.0


def nms(boxes, scores, iou_threshold, score_threshold, max_detections):
    """Greedy non-maximum suppression; kept indices, best first (int64). See the reference."""
    box = _validate.boxes(boxes)
    score = _validate.box_scores(scores, box.shape[0])
    cdef double iou_t = _validate.unit_interval(iou_threshold, "iou_threshold")
    score_t = _validate.unit_interval(score_threshold, "score_threshold")
    cdef Py_ssize_t limit = _validate.count(max_detections, "max_detections")
    candidates = np.flatnonzero(score >= np.float32(score_t))
    order_arr = np.ascontiguousarray(
        candidates[np.argsort(-score[candidates], kind="stable")], dtype=np.int64)
    kept_arr = np.empty(min(limit, order_arr.shape[0]), dtype=np.int64)
    cdef const float[:, ::1] b = box
    cdef const int64_t[::1] order = order_arr
    cdef int64_t[::1] kept = kept_arr
    cdef Py_ssize_t n = 0, c, k
    cdef bint keep
    with nogil:
        for c in range(order.shape[0]):
            if n >= limit:
                break
            keep = True
            for k in range(n):
                if _iou(b, order[c], kept[k]) > iou_t:
                    keep = False
                    break
            if keep:
                kept[n] = order[c]
                n += 1
    return kept_arr[:n].copy()
