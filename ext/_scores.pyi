"""Stubs for the compiled score kernels (ext/_scores.pyx); semantics in ext._reference."""

import numpy as np
import numpy.typing as npt

from ext._results import Confidence

__all__ = ["Confidence", "confidence", "postprocess", "softmax"]

def softmax(
    logits: npt.NDArray[np.float32], temperature: float = 1.0
) -> npt.NDArray[np.float32]: ...
def confidence(probs: npt.NDArray[np.float32]) -> Confidence: ...
def postprocess(
    outputs: npt.NDArray[np.int8] | npt.NDArray[np.uint8] | npt.NDArray[np.float32],
    scale: float | None,
    zero_point: int | None,
    temperature: float = 1.0,
    apply_softmax: bool = True,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
