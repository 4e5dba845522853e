"""Stubs for the compiled box kernels (ext/_boxes.pyx); semantics in ext._reference."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["decode_boxes", "nms"]

def decode_boxes(
    raw: npt.NDArray[np.float32], anchors: npt.NDArray[np.float32], scale: Sequence[float]
) -> npt.NDArray[np.float32]: ...
def nms(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    iou_threshold: float,
    score_threshold: float,
    max_detections: int,
) -> npt.NDArray[np.int64]: ...
