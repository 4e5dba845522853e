"""The TFLite runtime: the only module that imports an interpreter package.

ai-edge-litert is the primary runtime (XNNPACK int8 kernels, NumPy 2). On armv7
boards, where it has no wheels, tflite-runtime (NumPy < 2 only) is the fallback.
An Interpreter is not thread-safe: every worker thread owns its own instances.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_node.errors import ModelLoadError

log = logging.getLogger(__name__)

try:  # pragma: no branch - which one imports depends on the platform
    from ai_edge_litert.interpreter import Interpreter as _Interpreter
    from ai_edge_litert.interpreter import load_delegate as _load_delegate

    RUNTIME = "ai-edge-litert"
except ImportError:  # pragma: no cover - armv7 fallback
    try:
        from tflite_runtime.interpreter import Interpreter as _Interpreter
        from tflite_runtime.interpreter import load_delegate as _load_delegate

        RUNTIME = "tflite-runtime"
    except ImportError:
        _Interpreter = _load_delegate = None
        RUNTIME = "none"

CPU = "cpu"  # the built-in CPU kernels (XNNPACK): what runs without an external delegate
# The entry points of TFLite's external delegate plugin ABI (what load_delegate calls).
PLUGIN_SYMBOLS = ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate")


@dataclass(frozen=True)
class DelegateSpec:
    """An external TFLite delegate: the plugin library and its options.

    ``library`` is a path or a soname the dynamic loader finds (``libedgetpu.so.1``,
    ``libarmnnDelegate.so``...); ``options`` are passed to the plugin as strings (e.g.
    Edge TPU's ``device = "usb"``, Arm NN's ``backends = "CpuAcc"``).
    """

    library: str
    options: Mapping[str, str] = field(default_factory=dict)


class DelegateError(Exception):
    """An external delegate cannot be used; the message says why (for the log and metadata)."""


def check_delegate(spec: DelegateSpec) -> None:
    """Raise ``DelegateError`` unless ``spec.library`` loads and is a TFLite delegate plugin.

    Checked with the dynamic loader first (so that a library that is not a delegate is
    refused without the runtime's own noisy failure), then by creating the delegate.
    """
    if _load_delegate is None:
        raise DelegateError("no TFLite runtime installed")
    try:
        lib = ctypes.CDLL(spec.library)
    except OSError as exc:
        raise DelegateError(f"cannot load {spec.library}: {exc}") from None
    missing = [name for name in PLUGIN_SYMBOLS if not hasattr(lib, name)]
    if missing:
        raise DelegateError(f"{spec.library} is not a TFLite delegate plugin (no "
                            f"{', '.join(missing)})")
    _open(spec)


def _open(spec: DelegateSpec):
    try:
        return _load_delegate(spec.library, dict(spec.options))
    except (OSError, ValueError, RuntimeError, AttributeError) as exc:
        raise DelegateError(f"{spec.library}: the delegate failed to start: {exc}") from None


@dataclass(frozen=True)
class TensorSpec:
    """Static description of a model input or output tensor, from the interpreter's details.

    ``shape`` is the model's declared shape, batch dimension included as the model
    declares it (usually 1); ``scale`` is 0.0 when the tensor is not quantized.
    """

    name: str
    index: int
    dtype: np.dtype
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        """True when the tensor is quantized (non-zero ``scale``) with an integer dtype."""
        return self.scale != 0.0 and self.dtype.kind in "iu"


def _spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        name=detail["name"],
        index=int(detail["index"]),
        dtype=np.dtype(detail["dtype"]),
        shape=tuple(int(d) for d in detail["shape"]),  # as allocated: a dynamic dim is 1
        scale=float(scale),
        zero_point=int(zero_point),
    )


class TFLiteModel:
    """One interpreter for one model file, resized on demand to the batch size.

    ``inputs`` and ``outputs`` are the model's tensors in the interpreter's order.
    With ``delegate`` the interpreter runs the ops the delegate takes on it; a delegate
    that fails here raises ``DelegateError`` (the caller falls back to the CPU).
    Single-threaded by contract: create one per worker thread.
    """

    def __init__(self, content: bytes, num_threads: int = 1, source: str = "<memory>",
                 delegate: DelegateSpec | None = None):
        if _Interpreter is None:
            raise ModelLoadError(
                "no TFLite runtime installed: pip install ai-edge-litert "
                "(or tflite-runtime on armv7)"
            )
        delegates = [_open(delegate)] if delegate is not None else None
        try:
            self._interp = _Interpreter(model_content=content, num_threads=num_threads,
                                        experimental_delegates=delegates)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            if delegate is not None:
                raise DelegateError(f"{delegate.library}: the model does not run on the "
                                    f"delegate: {exc}") from None
            raise ModelLoadError(f"{source}: not a loadable TFLite model: {exc}") from exc
        self.inputs = tuple(_spec(d) for d in self._interp.get_input_details())
        self.outputs = tuple(_spec(d) for d in self._interp.get_output_details())
        if not self.inputs or not self.outputs:
            raise ModelLoadError(f"{source}: the model has no input or no output tensor")
        self._shapes = tuple(s.shape for s in self.inputs)

    def run(self, tensors: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Invoke on one array per input (model order, dtypes and shapes already checked).

        Inputs whose shape differs from the last call are resized first. Returns a copy
        of every output, in model order.
        """
        shapes = tuple(t.shape for t in tensors)
        if shapes != self._shapes:
            for spec, shape in zip(self.inputs, shapes, strict=True):
                self._interp.resize_tensor_input(spec.index, shape)
            self._interp.allocate_tensors()
            self._shapes = shapes
        for spec, tensor in zip(self.inputs, tensors, strict=True):
            self._interp.set_tensor(spec.index, tensor)
        self._interp.invoke()
        return tuple(self._interp.get_tensor(spec.index) for spec in self.outputs)


def batch_resizable(content: bytes, model: TFLiteModel) -> bool:
    """Whether the model's first dimension is a batch the interpreter can resize.

    True when every input and output has rank >= 1 with a leading 1, and resizing every
    input's first dimension to 2 makes every output's first dimension 2 with the rest
    unchanged. Some detectors fold a larger batch into another dimension instead
    (``[1,896,16]`` becomes ``[1,1792,16]``): those are not batchable and must be served
    one item per invocation.
    """
    if any(not s.shape or s.shape[0] != 1 for s in (*model.inputs, *model.outputs)):
        return False
    probe = TFLiteModel(content)
    try:  # output shapes are only known for sure once the resized model has run
        out = probe.run(tuple(np.zeros((2, *s.shape[1:]), s.dtype) for s in probe.inputs))
    except (ValueError, RuntimeError):
        return False
    expected = tuple((2, *o.shape[1:]) for o in model.outputs)
    return tuple(o.shape for o in out) == expected
