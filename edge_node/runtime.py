"""The TFLite runtime: the only module that imports an interpreter package.

ai-edge-litert is the primary runtime (XNNPACK int8 kernels, NumPy 2). On armv7
boards, where it has no wheels, tflite-runtime (NumPy < 2 only) is the fallback.
An Interpreter is not thread-safe: every worker thread owns its own instances.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from edge_node.errors import ModelLoadError

log = logging.getLogger(__name__)

try:  # pragma: no branch - which one imports depends on the platform
    from ai_edge_litert.interpreter import Interpreter as _Interpreter

    RUNTIME = "ai-edge-litert"
except ImportError:  # pragma: no cover - armv7 fallback
    try:
        from tflite_runtime.interpreter import Interpreter as _Interpreter

        RUNTIME = "tflite-runtime"
    except ImportError:
        _Interpreter = None
        RUNTIME = "none"


@dataclass(frozen=True)
class TensorSpec:
    """Static description of a model input or output tensor."""

    name: str
    index: int
    dtype: np.dtype
    shape: tuple[int, ...]  # with the batch dimension as the model declares it
    scale: float  # 0.0 when the tensor is not quantized
    zero_point: int

    @property
    def quantized(self) -> bool:
        """True when the tensor is quantized (non-zero ``scale``)."""
        return self.scale != 0.0


def _spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        name=detail["name"],
        index=int(detail["index"]),
        dtype=np.dtype(detail["dtype"]),
        shape=tuple(int(d) for d in detail["shape_signature"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


class TFLiteModel:
    """One interpreter for one model file, resized on demand to the batch size.

    Single-threaded by contract: create one per worker thread.
    """

    def __init__(self, content: bytes, num_threads: int = 1, source: str = "<memory>"):
        if _Interpreter is None:
            raise ModelLoadError(
                "no TFLite runtime installed: pip install ai-edge-litert "
                "(or tflite-runtime on armv7)"
            )
        try:
            self._interp = _Interpreter(model_content=content, num_threads=num_threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{source}: not a loadable TFLite model: {exc}") from exc
        inputs = self._interp.get_input_details()
        outputs = self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(
                f"{source}: expected exactly one input and one output tensor, "
                f"found {len(inputs)} and {len(outputs)}"
            )
        self.input = _spec(inputs[0])
        self.output = _spec(outputs[0])
        self._batch = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Invoke on ``batch`` (dtype and per-item shape already checked); returns a copy."""
        n = batch.shape[0]
        if n != self._batch:
            self._interp.resize_tensor_input(self.input.index, batch.shape)
            self._interp.allocate_tensors()
            self._batch = n
        self._interp.set_tensor(self.input.index, batch)
        self._interp.invoke()
        return self._interp.get_tensor(self.output.index)
