"""The specification of every ext kernel, in vectorized NumPy.

The Cython kernels must reproduce these results: bit for bit for integer
outputs and for the float32 element-wise maps (same IEEE operations in the same
order; setup.py builds with ``-ffp-contract=off`` so no FMA creeps in), within
rtol 1e-5 / atol 1e-6 for softmax and the confidence measures.

Conventions shared by all functions:

* Image batches are uint8 ``[N,H,W]`` or ``[N,H,W,C]``; a 3-D batch is one channel.
* Results are new C-contiguous arrays; inputs are never modified.
* Bad arguments raise TypeError (wrong Python type) or ValueError (wrong dtype,
  rank, size or value), naming the argument; see ``ext._validate``.
"""

import numpy as np

from ext import _validate
from ext._results import Confidence, WindowStats

__all__ = [
    "Confidence",
    "WindowStats",
    "axis_table",
    "confidence",
    "decode_boxes",
    "dequantize",
    "make_lut",
    "nms",
    "normalize",
    "postprocess",
    "preprocess",
    "quantize",
    "resize_bilinear",
    "softmax",
    "window_stats",
]

WEIGHT_BITS = 11  # bilinear weights are integers in [0, 2048]
WEIGHT_ONE = 1 << WEIGHT_BITS
_SHIFT = 2 * WEIGHT_BITS
_ROUND = 1 << (_SHIFT - 1)


def axis_table(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices ``i0``, ``i1`` and the fixed-point weight of ``i1`` per output index.

    Half-pixel centres, as cv2.INTER_LINEAR::

        src = (d + 0.5) * (in / out) - 0.5, clamped below at 0
        i0 = floor(src); frac = src - i0
        if i0 >= in - 1: i0 = in - 1; frac = 0
        i1 = min(i0 + 1, in - 1); w = floor(frac * 2048 + 0.5)

    All in float64; the weight of ``i0`` is ``2048 - w``.
    """
    d = np.arange(out_size, dtype=np.float64)
    src = (d + 0.5) * (float(in_size) / float(out_size)) - 0.5
    src = np.where(src < 0.0, 0.0, src)
    i0 = np.floor(src)
    frac = src - i0
    last = i0 >= in_size - 1
    i0 = np.where(last, in_size - 1, i0).astype(np.int64)
    frac = np.where(last, 0.0, frac)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w = np.floor(frac * float(WEIGHT_ONE) + 0.5).astype(np.int64)
    return i0, i1, w


def _resize4(images: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Integer bilinear resize of a validated 4-D batch."""
    _, in_h, in_w, _ = images.shape
    y0, y1, wy = axis_table(in_h, out_h)
    x0, x1, wx = axis_table(in_w, out_w)
    # int32 is enough: the largest sum, 255 * 2048 * 2048 + 2**21, is below 2**31.
    # Vertical pass first (exact integers, so the order does not change the result).
    wy = wy.astype(np.int32)[:, np.newaxis, np.newaxis]
    col = images[:, y0].astype(np.int32) * (WEIGHT_ONE - wy) + images[:, y1].astype(np.int32) * wy
    wx = wx.astype(np.int32)[:, np.newaxis]
    v = col[:, :, x0] * (WEIGHT_ONE - wx) + col[:, :, x1] * wx
    return np.ascontiguousarray(((v + _ROUND) >> _SHIFT).astype(np.uint8))


def resize_bilinear(images: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize to ``[N,out_h,out_w(,C)]`` uint8 in 11-bit fixed point.

    Per output pixel, with the tables of :func:`axis_table`::

        h_r = p[r, x0] * (2048 - wx) + p[r, x1] * wx        for r in (y0, y1)
        v = h_y0 * (2048 - wy) + h_y1 * wy
        out = (v + 2**21) >> 22

    Integer arithmetic only, so every implementation agrees exactly. A
    same-size resize is the identity.
    """
    squeeze = isinstance(images, np.ndarray) and images.ndim == 3
    batch = _validate.images(images)
    out_h = _validate.size(out_h, "out_h")
    out_w = _validate.size(out_w, "out_w")
    out = _resize4(batch, out_h, out_w)
    return out[..., 0].copy() if squeeze else out


def _normalize4(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32)
    return (x / np.float32(255.0) - mean) / std


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """``(x / 255 - mean[c]) / std[c]`` in float32, same shape as ``images``.

    Computed as float32 operations in exactly this order:
    ``(float32(x) / float32(255) - float32(mean[c])) / float32(std[c])``.
    ``mean``/``std`` have length C or 1 (broadcast); ``std`` must be > 0.
    """
    batch = _validate.images(images)
    mean32, std32 = _validate.channel_params(mean, std)
    channels = batch.shape[3]
    mean32 = _validate.channels_match(mean32, channels)
    std32 = _validate.channels_match(std32, channels)
    return _normalize4(batch, mean32, std32).reshape(images.shape)


def _quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    with np.errstate(over="ignore"):  # overflow to +-inf is intended: it saturates below
        r = np.rint(x / np.float32(scale))  # float32 division, round half to even
    q = np.clip(r.astype(np.float64) + zero_point, info.min, info.max)
    q = np.where(np.isnan(r), zero_point, q)
    return q.astype(dtype)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Affine quantization: ``clip(rint(x / float32(scale)) + zero_point, qmin, qmax)``.

    ``x`` is float32 of any shape (empty allowed). The division is float32, the
    rounding is half to even, out-of-range values (and +-inf) saturate to the
    dtype range. NaN maps to ``zero_point`` (the quantized zero), so a bad
    input pixel cannot push a logit to an extreme.
    """
    arr = _validate.float_array(x)
    dt = _validate.quant_dtype(dtype)
    scale_f, zp = _validate.quant_params(scale, zero_point, dt)
    return _quantize(arr, scale_f, zp, dt)


def _dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """``(float32(q) - float32(zero_point)) * float32(scale)``; ``q`` int8/uint8, any shape."""
    arr = _validate.quantized_array(q)
    scale_f, zp = _validate.quant_params(scale, zero_point, arr.dtype)
    return _dequantize(arr, scale_f, zp)


def _lut(mean32: np.ndarray, std32: np.ndarray, scale, zero_point, dt: np.dtype) -> np.ndarray:
    channels = mean32.shape[0]
    values = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, np.newaxis], (256, channels))
    table = _normalize4(values.reshape(1, 1, 256, channels), mean32, std32)
    if dt != np.float32:
        scale_f, zp = _validate.quant_params(scale, zero_point, dt)
        table = _quantize(table, scale_f, zp, dt)
    return np.ascontiguousarray(table.reshape(256, channels).T)


def make_lut(mean, std, scale, zero_point, dtype) -> np.ndarray:
    """The ``[C,256]`` table ``lut[c, v] = quantize(normalize(v))`` for every uint8 ``v``.

    C is the common length of ``mean`` and ``std``. For ``dtype`` float32 the
    table is ``normalize(v)`` and ``scale``/``zero_point`` are ignored.
    """
    dt = _validate.quant_dtype(dtype, allow_float=True)
    mean32, std32 = _validate.channel_params(mean, std)
    return _lut(mean32, std32, scale, zero_point, dt)


def preprocess(
    images: np.ndarray, out_h: int, out_w: int, mean, std, scale, zero_point, dtype
) -> np.ndarray:
    """Resize, normalize and quantize: ``[N,out_h,out_w,C]`` of ``dtype``.

    Defined as ``quantize(normalize(resize_bilinear(images, out_h, out_w), mean,
    std), scale, zero_point, dtype)``; for ``dtype`` float32 the quantize step
    is skipped and ``scale``/``zero_point`` are ignored. A 3-D batch gives C = 1.
    """
    batch = _validate.images(images)
    out_h = _validate.size(out_h, "out_h")
    out_w = _validate.size(out_w, "out_w")
    mean32, std32 = _validate.channel_params(mean, std)
    dt = _validate.quant_dtype(dtype, allow_float=True)
    channels = batch.shape[3]
    mean32 = _validate.channels_match(mean32, channels)
    std32 = _validate.channels_match(std32, channels)
    if dt != np.float32:
        scale_f, zp = _validate.quant_params(scale, zero_point, dt)
    out = _normalize4(_resize4(batch, out_h, out_w), mean32, std32)
    if dt != np.float32:
        out = _quantize(out, scale_f, zp, dt)
    return np.ascontiguousarray(out)


def _softmax(x: np.ndarray, temperature: float) -> np.ndarray:
    z = (x - x.max(axis=1, keepdims=True)) / np.float32(temperature)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float32, stable (row max subtracted).

    ``logits`` is float32 ``[N,K]``; ``temperature`` > 0. A row with NaN or
    +inf gives NaN probabilities.
    """
    arr = _validate.scores(logits, "logits")
    t = _validate.positive(temperature, "temperature")
    return _softmax(arr, t)


def confidence(probs: np.ndarray) -> Confidence:
    """Max probability, top-1/top-2 margin, entropy and normalized entropy per row.

    ``probs`` is float32 ``[N,K]``. Entropy is in nats with 0 * log 0 = 0
    (non-positive entries contribute nothing); normalized entropy is
    ``entropy / ln K`` and 0 when K == 1; margin equals max_prob when K == 1.
    Sums run in float64; results are float32.
    """
    arr = _validate.scores(probs, "probs")
    k = arr.shape[1]
    ordered = np.sort(arr, axis=1)
    top1 = ordered[:, -1]
    margin = top1 - ordered[:, -2] if k > 1 else top1.copy()
    p = arr.astype(np.float64)
    positive = p > 0.0
    terms = np.where(positive, p * np.log(np.where(positive, p, 1.0)), 0.0)
    entropy = -terms.sum(axis=1)
    normalized = entropy / np.log(k) if k > 1 else np.zeros_like(entropy)
    return Confidence(
        np.ascontiguousarray(top1),
        np.ascontiguousarray(margin),
        entropy.astype(np.float32),
        normalized.astype(np.float32),
    )


def postprocess(
    outputs: np.ndarray,
    scale: float,
    zero_point: int,
    temperature: float = 1.0,
    apply_softmax: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model outputs ``[N,K]`` to ``(probs float32 [N,K], labels int64 [N], max_prob float32 [N])``.

    int8/uint8 outputs are dequantized with ``scale``/``zero_point`` first
    (ignored for float32 outputs). With ``apply_softmax`` the scores go through
    :func:`softmax`, otherwise they are taken as probabilities. ``labels`` is the
    argmax of the scores before softmax (first index on ties, NaN wins as in
    ``np.argmax``): softmax is monotonic, and taking it before ``exp`` keeps
    labels exact across implementations. ``max_prob`` is ``probs[n, labels[n]]``.
    """
    arr = _validate.scores(outputs, "outputs", allow_quantized=True)
    if arr.dtype != np.float32:
        scale_f, zp = _validate.quant_params(scale, zero_point, arr.dtype)
        scores = _dequantize(arr, scale_f, zp)
    else:
        scores = arr
    t = _validate.positive(temperature, "temperature")
    if not isinstance(apply_softmax, (bool, np.bool_)):
        raise TypeError(f"apply_softmax: expected bool, got {type(apply_softmax).__name__}")
    labels = np.argmax(scores, axis=1).astype(np.int64)
    probs = _softmax(scores, t) if apply_softmax else scores.copy()
    max_prob = probs[np.arange(probs.shape[0]), labels]
    return np.ascontiguousarray(probs), labels, max_prob


def decode_boxes(raw: np.ndarray, anchors: np.ndarray, scale) -> np.ndarray:
    """SSD box regressions -> corner boxes ``[A,4]`` float32 ``(ymin, xmin, ymax, xmax)``.

    ``raw`` is float32 ``[A, >=4]`` with ``(dx, dy, dw, dh)`` first (extra columns, such as
    keypoints, are ignored); ``anchors`` float32 ``[A,4]`` ``(x_center, y_center, w, h)``;
    ``scale`` four positive numbers ``(x, y, w, h)``. In float32, in this order (the
    decoding of MediaPipe's TensorsToDetectionsCalculator)::

        cx = dx / x * aw + ax;   cy = dy / y * ah + ay
        w = dw / w_scale * aw;   h = dh / h_scale * ah
        (cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2)
    """
    box = _validate.boxes(raw, "raw")
    anc = _validate.boxes(anchors, "anchors")
    if anc.shape != (box.shape[0], 4):
        raise ValueError(f"anchors: expected shape [{box.shape[0]},4], got {list(anc.shape)}")
    sx, sy, sw, sh = (np.float32(v) for v in _validate.box_scale(scale))
    cx = box[:, 0] / sx * anc[:, 2] + anc[:, 0]
    cy = box[:, 1] / sy * anc[:, 3] + anc[:, 1]
    half_w = box[:, 2] / sw * anc[:, 2] / np.float32(2.0)
    half_h = box[:, 3] / sh * anc[:, 3] / np.float32(2.0)
    return np.ascontiguousarray(
        np.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=1))


def _iou(boxes: np.ndarray, i: int, others: np.ndarray) -> np.ndarray:
    """Intersection over union of box ``i`` with ``others`` (indices), in float64."""
    b = boxes.astype(np.float64)
    y0, x0, y1, x1 = b[i, 0], b[i, 1], b[i, 2], b[i, 3]
    o = b[others]
    area_i = np.maximum(0.0, y1 - y0) * np.maximum(0.0, x1 - x0)
    area_o = np.maximum(0.0, o[:, 2] - o[:, 0]) * np.maximum(0.0, o[:, 3] - o[:, 1])
    ih = np.minimum(y1, o[:, 2]) - np.maximum(y0, o[:, 0])
    iw = np.minimum(x1, o[:, 3]) - np.maximum(x0, o[:, 1])
    inter = np.maximum(0.0, ih) * np.maximum(0.0, iw)
    union = area_i + area_o - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0.0, inter / union, 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, score_threshold: float,
        max_detections: int) -> np.ndarray:
    """Greedy non-maximum suppression; returns the kept box indices, best first (int64).

    ``boxes`` float32 ``[M, >=4]`` ``(ymin, xmin, ymax, xmax)``; ``scores`` float32 ``[M]``.
    Candidates are the boxes with ``score >= score_threshold`` (NaN never is), taken by
    descending score (ties: lower index first). A candidate is kept unless its IoU with a
    box already kept is ``> iou_threshold``; at most ``max_detections`` are kept. IoU is
    computed in float64: ``inter / (area_a + area_b - inter)`` with areas and overlaps
    clamped at 0, and 0 when the union is not > 0.
    """
    box = _validate.boxes(boxes)
    score = _validate.box_scores(scores, box.shape[0])
    iou_t = _validate.unit_interval(iou_threshold, "iou_threshold")
    score_t = _validate.unit_interval(score_threshold, "score_threshold")
    limit = _validate.count(max_detections, "max_detections")
    candidates = np.flatnonzero(score >= np.float32(score_t))
    order = candidates[np.argsort(-score[candidates], kind="stable")]
    kept: list[int] = []
    for i in order:
        if len(kept) >= limit:
            break
        if not kept or not (_iou(box, int(i), np.asarray(kept)) > iou_t).any():
            kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)


def window_stats(x: np.ndarray, channels: int, lo: float, hi: float,
                 bins: int) -> WindowStats:
    """Per-channel counts, sums and sums of squares, and a histogram, of ``x`` (drift).

    ``x`` is uint8, int8 or float32 of any shape, read in C order as ``[-1, channels]``:
    flat value ``i`` belongs to channel ``i % channels`` (the last axis of an NHWC image
    batch). NaN and +-inf are skipped. Each finite value ``v`` (as float64) falls in bin
    ``floor((v - lo) * (bins / (hi - lo)))`` clamped to ``[0, bins - 1]`` (values outside
    ``[lo, hi)`` land in the end bins). Sums run in float64: exact for the integer dtypes;
    for float32 within rtol 1e-9 of any summation order. An empty ``x`` gives zeros.
    """
    arr, c, low, high, n = _validate.stats_args(x, channels, lo, hi, bins)
    v = arr.reshape(-1, c).astype(np.float64)
    finite = np.isfinite(v)
    z = np.where(finite, v, 0.0)
    scale = float(n) / (high - low)
    idx = np.floor((v[finite] - low) * scale)
    idx = np.clip(idx, 0.0, float(n - 1)).astype(np.int64)
    return WindowStats(
        finite.sum(axis=0).astype(np.int64),
        z.sum(axis=0),
        (z * z).sum(axis=0),
        np.bincount(idx, minlength=n).astype(np.int64),
    )
