"""Box kernels: decode_boxes and nms. The reference against its definition, the compiled
kernels against the reference (bit for bit), and argument checks."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ext
from ext import _reference as ref

PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
COORDS = st.floats(-2.0, 2.0, width=32, allow_nan=False)


@st.composite
def box_sets(draw):
    """Boxes [M,4] (some degenerate or inverted, many overlapping), scores with ties."""
    m = draw(st.integers(0, 40))
    boxes = draw(arrays(np.float32, (m, 4), elements=COORDS))
    if m and draw(st.booleans()):  # near-duplicates of a few boxes, so suppression happens
        base = boxes[draw(st.integers(0, m - 1))]
        boxes[: m // 2] = base + draw(arrays(np.float32, (m // 2, 4),
                                             elements=st.floats(-0.0625, 0.0625, width=32)))
    scores = draw(arrays(np.float32, (m,), elements=st.sampled_from(
        [0.0, 0.1, 0.5, 0.5, 0.9, 1.0, float("nan")]) | st.floats(0, 1, width=32)))
    return boxes, scores


def brute_force_nms(boxes, scores, iou_t, score_t, limit):
    """The definition, one pair at a time in plain Python floats (float64)."""
    def iou(i, j):
        a, b = [float(v) for v in boxes[i]], [float(v) for v in boxes[j]]
        area = lambda q: max(0.0, q[2] - q[0]) * max(0.0, q[3] - q[1])  # noqa: E731
        inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
                 * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
        union = area(a) + area(b) - inter
        return inter / union if union > 0 else 0.0

    order = sorted((i for i in range(len(scores)) if scores[i] >= np.float32(score_t)),
                   key=lambda i: (-float(scores[i]), i))
    kept = []
    for i in order:
        if len(kept) < limit and all(iou(i, k) <= iou_t for k in kept):
            kept.append(i)
    return kept


@PROPERTY
@given(box_sets(), st.floats(0, 1), st.floats(0, 1), st.integers(0, 50))
def test_reference_nms_is_greedy_suppression(data, iou_t, score_t, limit):
    boxes, scores = data
    kept = ref.nms(boxes, scores, iou_t, score_t, limit)
    assert kept.dtype == np.int64
    assert kept.tolist() == brute_force_nms(boxes, scores, iou_t, score_t, limit)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 1, 1], [0, 0.05, 1, 1.05], [2, 2, 3, 3], [0, 0, 1, 1]],
                     dtype=np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.9], dtype=np.float32)
    # 1 and 3 tie at 0.9: the lower index goes first; 3 and 0 overlap 1; 2 stands alone.
    assert ext.nms(boxes, scores, 0.5, 0.1, 10).tolist() == [1, 2]
    assert ext.nms(boxes, scores, 0.5, 0.75, 10).tolist() == [1]
    assert ext.nms(boxes, scores, 0.5, 0.1, 1).tolist() == [1]
    assert ext.nms(boxes, scores, 1.0, 0.0, 10).tolist() == [1, 3, 0, 2]


def test_decode_boxes_matches_its_formula():
    raw = np.array([[12.8, -25.6, 64.0, 32.0, 99, 99]], dtype=np.float32)  # extra columns ignored
    anchors = np.array([[0.5, 0.25, 1.0, 1.0]], dtype=np.float32)
    out = ext.decode_boxes(raw, anchors, (128, 128, 128, 128))
    cx, cy, w, h = 0.5 + 0.1, 0.25 - 0.2, 0.5, 0.25
    np.testing.assert_allclose(out, [[cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]],
                               rtol=1e-6)
    assert out.dtype == np.float32 and out.shape == (1, 4)


@pytest.mark.parametrize("call,error", [
    (lambda: ext.nms(np.zeros((3, 3), np.float32), np.zeros(3, np.float32), 0.5, 0.5, 1),
     "boxes: expected shape"),
    (lambda: ext.nms(np.zeros((3, 4), np.float64), np.zeros(3, np.float32), 0.5, 0.5, 1),
     "boxes"),
    (lambda: ext.nms(np.zeros((3, 4), np.float32), np.zeros(2, np.float32), 0.5, 0.5, 1),
     "scores: expected shape [3]"),
    (lambda: ext.nms(np.zeros((3, 4), np.float32), np.zeros(3, np.float32), 1.5, 0.5, 1),
     "iou_threshold: must be in [0, 1]"),
    (lambda: ext.nms(np.zeros((3, 4), np.float32), np.zeros(3, np.float32), 0.5,
                     float("nan"), 1), "score_threshold: must be finite"),
    (lambda: ext.nms(np.zeros((3, 4), np.float32), np.zeros(3, np.float32), 0.5, 0.5, -1),
     "max_detections: must be >= 0"),
    (lambda: ext.decode_boxes(np.zeros((3, 4), np.float32), np.zeros((2, 4), np.float32),
                              (1, 1, 1, 1)), "anchors: expected shape [3,4]"),
    (lambda: ext.decode_boxes(np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32),
                              (1, 0, 1, 1)), "scale[1]: must be > 0"),
    (lambda: ext.decode_boxes(np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32),
                              (1, 1, 1)), "scale: expected 4 numbers"),
])
def test_bad_arguments_name_the_argument(call, error):
    with pytest.raises((ValueError, TypeError)) as err:
        call()
    assert error in str(err.value)


if ext.IMPLEMENTATION == "cython":
    from ext import _boxes

    @PROPERTY
    @given(box_sets(), st.floats(0, 1), st.floats(0, 1), st.integers(0, 50))
    def test_compiled_nms_matches_the_reference(data, iou_t, score_t, limit):
        boxes, scores = data
        np.testing.assert_array_equal(_boxes.nms(boxes, scores, iou_t, score_t, limit),
                                      ref.nms(boxes, scores, iou_t, score_t, limit))

    @PROPERTY
    @given(st.integers(0, 30).flatmap(lambda m: st.tuples(
        arrays(np.float32, (m, 6), elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False)),
        arrays(np.float32, (m, 4), elements=st.floats(-2, 2, width=32)))),
        st.tuples(*[st.floats(1e-3, 1e3)] * 4))
    def test_compiled_decode_matches_the_reference_bit_for_bit(data, scale):
        raw, anchors = data
        np.testing.assert_array_equal(_boxes.decode_boxes(raw, anchors, scale),
                                      ref.decode_boxes(raw, anchors, scale))
