"""``task = "detection"``: single-shot detectors (SSD, BlazeFace-style) with decoded boxes
after non-maximum suppression.

The model gives, per anchor, box regressions ``[1, A, >=4]`` (``dx, dy, dw, dh`` first;
keypoints after them are ignored) and class scores ``[1, A, C]``. The node builds the
anchor grid from the config, decodes the boxes (``ext.decode_boxes``), takes each
anchor's best class, applies the score activation and keeps the best boxes with greedy
non-maximum suppression (``ext.nms``, class-agnostic).

Inputs are the model's own (as ``task = "tensor"``). Outputs, per item, padded with
zeros to ``max_detections``: ``boxes`` FP32 ``[D,4]`` ``(ymin, xmin, ymax, xmax)``
normalized to the input size, ``scores`` FP32 ``[D]``, ``classes`` INT32 ``[D]`` and
``count`` INT32 (how many rows are real).

Config (``[detection]``; every key but ``strides`` optional)::

    boxes = "regressors"          # output name; default: the output whose last dim >= 4
    scores = "classificators"     # output name; default: the other output
    strides = [8, 16, 16, 16]     # one per feature map of the anchor grid
    anchors_per_cell = 2          # per feature map (or a list, one per stride)
    anchor_offset = 0.5           # anchor centre within its cell
    box_scale = [128, 128, 128, 128]  # x, y, w, h; default: input width, height, width, height
    score_activation = "sigmoid"  # or "none" (scores already probabilities)
    score_clip = 100.0            # raw scores clipped to +-score_clip before the sigmoid
    score_threshold = 0.5
    iou_threshold = 0.3
    max_detections = 100

Anchor grid (fixed-size anchors, as MediaPipe's SsdAnchorsCalculator builds them with
``fixed_anchor_size``): consecutive feature maps with the same stride share one grid of
``ceil(H / stride) x ceil(W / stride)`` cells; each cell holds the anchors of every map
sharing it; anchors are ``(x_center, y_center, 1, 1)`` with centres
``((x + offset) / grid_w, (y + offset) / grid_h)``, in row-major cell order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

import ext
from edge_node.model_config import check_keys
from edge_node.tasks.base import Task, TaskContext, TensorInfo, load_error
from edge_node.tasks.tensor import convertible, model_inputs

DETECTION_KEYS = ("boxes", "scores", "strides", "anchors_per_cell", "anchor_offset",
                  "box_scale", "score_activation", "score_clip", "score_threshold",
                  "iou_threshold", "max_detections")
FP32 = np.dtype(np.float32)
INT32 = np.dtype(np.int32)


def ssd_anchors(height: int, width: int, strides: list[int], per_cell: list[int],
                offset: float) -> np.ndarray:
    """Fixed-size SSD anchors ``[A,4]`` float32 ``(x_center, y_center, 1, 1)``."""
    rows = []
    i = 0
    while i < len(strides):
        stride, count = strides[i], 0
        while i < len(strides) and strides[i] == stride:  # maps sharing a grid
            count += per_cell[i]
            i += 1
        gh, gw = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        cx = ((xs.ravel() + offset) / gw).astype(np.float32)
        cy = ((ys.ravel() + offset) / gh).astype(np.float32)
        cell = np.stack([cx, cy, np.ones_like(cx), np.ones_like(cx)], axis=1)
        rows.append(np.repeat(cell, count, axis=0))
    return np.ascontiguousarray(np.concatenate(rows) if rows else np.zeros((0, 4), FP32))


class DetectionTask(Task):
    """Box regressions and class scores in, decoded and suppressed detections out."""

    kind = "detection"

    def __init__(self, context: TaskContext):
        super().__init__(context)
        sig = context.signature
        opts = context.options.get("detection", {})
        if not isinstance(opts, dict):
            raise load_error(context, f"[detection] must be a table, got {opts!r}")
        check_keys(context.where, "detection.", opts, DETECTION_KEYS)
        self._opts, self._ctx = opts, context
        names = [o.name for o in sig.outputs]
        if len(names) < 2:
            raise load_error(context, f"detection needs two outputs, box regressions "
                             f"[1,A,>=4] and class scores [1,A,C]; the model has {names} "
                             "(serve it with task = \"tensor\")")
        default_boxes = next((o.name for o in sig.outputs
                              if len(o.shape) == 3 and o.shape[-1] >= 4), None)
        box_name = self._get("boxes", str, default_boxes)
        score_name = self._get("scores", str, next(
            (n for n in names if n != box_name), None))
        if box_name not in names or score_name not in names or box_name == score_name:
            raise load_error(context, f"detection.boxes and detection.scores must name two "
                             f"different outputs of the model ({names}); got "
                             f"{box_name!r} and {score_name!r}")
        self._box_index, self._score_index = names.index(box_name), names.index(score_name)
        box_spec, score_spec = sig.outputs[self._box_index], sig.outputs[self._score_index]
        if (len(box_spec.shape) != 3 or box_spec.shape[-1] < 4 or len(score_spec.shape) != 3
                or box_spec.shape[1] != score_spec.shape[1]
                or box_spec.dtype != FP32 or score_spec.dtype != FP32):
            raise load_error(context, f"detection needs float32 outputs boxes [1,A,>=4] and "
                             f"scores [1,A,C]; {box_name!r} is {list(box_spec.shape)} "
                             f"{box_spec.dtype}, {score_name!r} is {list(score_spec.shape)} "
                             f"{score_spec.dtype} (dequantize int8 detectors: not supported)")
        image = sig.inputs[0].shape
        if len(image) != 4:
            raise load_error(context, f"detection needs an image input [1,H,W,C]; the model's "
                             f"first input is {list(image)}")
        height, width = image[1], image[2]
        strides = self._get("strides", list, None)
        if not strides or not all(isinstance(s, int) and s >= 1 for s in strides):
            raise load_error(context, "detection.strides: a list of ints >= 1, one per "
                             "feature map of the anchor grid, e.g. [8, 16, 16, 16]")
        per_cell = self._get("anchors_per_cell", (int, list), 2)
        per_cell = [per_cell] * len(strides) if isinstance(per_cell, int) else per_cell
        if len(per_cell) != len(strides) or not all(
                isinstance(n, int) and n >= 1 for n in per_cell):
            raise load_error(context, "detection.anchors_per_cell: an int >= 1 or one per "
                             "stride")
        offset = self._number("anchor_offset", 0.5, 0.0, 1.0)
        self.anchors = ssd_anchors(height, width, strides, per_cell, offset)
        count = box_spec.shape[1]
        if self.anchors.shape[0] != count:
            raise load_error(context, f"the anchor grid (strides {strides}, anchors_per_cell "
                             f"{per_cell}, input {height}x{width}) has "
                             f"{self.anchors.shape[0]} anchors but the model gives {count} "
                             "boxes: fix detection.strides / anchors_per_cell")
        scale = self._get("box_scale", list, [width, height, width, height])
        if len(scale) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                      and v > 0 for v in scale):
            raise load_error(context, f"detection.box_scale: four numbers > 0 (x, y, w, h), "
                             f"got {scale!r}")
        self.box_scale = tuple(float(v) for v in scale)
        self.activation = self._get("score_activation", str, "sigmoid")
        if self.activation not in ("sigmoid", "none"):
            raise load_error(context, f"detection.score_activation: 'sigmoid' or 'none', got "
                             f"{self.activation!r}")
        self.score_clip = np.float32(self._number("score_clip", 100.0, 0.0, 1e6))
        self.score_threshold = self._number("score_threshold", 0.5, 0.0, 1.0)
        self.iou_threshold = self._number("iou_threshold", 0.3, 0.0, 1.0)
        self.max_detections = self._get("max_detections", int, 100)
        if not 1 <= self.max_detections <= 10000:
            raise load_error(context, "detection.max_detections: an int in 1..10000")
        d = self.max_detections
        lead = (-1,) if sig.batched else (1,)
        self.inputs = tuple(TensorInfo(s.name, s.dtype, (*lead, *s.shape[1:]))
                            for s in sig.inputs)
        self.outputs = (
            TensorInfo("boxes", FP32, (*lead, d, 4)),
            TensorInfo("scores", FP32, (*lead, d)),
            TensorInfo("classes", INT32, (*lead, d)),
            TensorInfo("count", INT32, lead),
        )

    def _get(self, key: str, kind, default):
        value = self._opts.get(key, default)
        if value is not default and (not isinstance(value, kind) or isinstance(value, bool)):
            raise load_error(self._ctx, f"detection.{key}: wrong type {type(value).__name__} "
                             f"({value!r})")
        return value

    def _number(self, key: str, default: float, low: float, high: float) -> float:
        value = self._opts.get(key, default)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not low <= value <= high):
            raise load_error(self._ctx, f"detection.{key}: a number in [{low}, {high}], got "
                             f"{value!r}")
        return float(value)

    def accepted_dtypes(self, name: str) -> tuple[np.dtype, ...]:
        """The model input's own dtype (and FP32 for an int8/uint8 quantized input)."""
        self.input_info(name)  # KeyError for an unknown input
        spec = next(s for s in self.signature.inputs if s.name == name)
        return (spec.dtype, FP32) if convertible(spec) else (spec.dtype,)

    def parameters(self) -> dict[str, str]:
        """The thresholds in use."""
        return {"score_threshold": repr(self.score_threshold),
                "iou_threshold": repr(self.iou_threshold),
                "max_detections": str(self.max_detections)}

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> tuple[int, tuple[np.ndarray, ...]]:
        """The model's own inputs, checked as ``task = "tensor"`` checks them."""
        self.check_names(list(inputs))
        return model_inputs(self, self.signature.inputs, inputs)

    def scores_of(self, raw_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per anchor: the best class and its activated score (float32)."""
        classes = np.argmax(raw_scores, axis=-1).astype(np.int32)
        best = np.take_along_axis(raw_scores, classes[..., None].astype(np.int64), -1)[..., 0]
        if self.activation == "sigmoid":
            clipped = np.clip(best, -self.score_clip, self.score_clip)
            best = np.float32(1.0) / (np.float32(1.0) + np.exp(-clipped))
        return classes, np.ascontiguousarray(best, dtype=np.float32)

    def finish(self, raw: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """Decode, score and suppress each item's detections; pad to ``max_detections``."""
        regressions, raw_scores = raw[self._box_index], raw[self._score_index]
        n, d = regressions.shape[0], self.max_detections
        boxes = np.zeros((n, d, 4), FP32)
        scores = np.zeros((n, d), FP32)
        classes = np.zeros((n, d), INT32)
        counts = np.zeros((n,), INT32)
        for i in range(n):
            decoded = ext.decode_boxes(np.ascontiguousarray(regressions[i]), self.anchors,
                                       self.box_scale)
            cls, score = self.scores_of(raw_scores[i])
            kept = ext.nms(decoded, score, self.iou_threshold, self.score_threshold, d)
            k = kept.shape[0]
            boxes[i, :k], scores[i, :k], classes[i, :k], counts[i] = (
                decoded[kept], score[kept], cls[kept], k)
        return boxes, scores, classes, counts
