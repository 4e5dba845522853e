"""``task = "tensor"``: tensors in, tensors out, for any TFLite model (the default).

Inputs and outputs are the model's own tensors, by the names, dtypes and shapes in the
model file. An input of an int8/uint8 quantized tensor also accepts FP32, which is
quantized with the tensor's own scale and zero point (``ext.quantize``). Outputs come
back in the model's dtype, or dequantized to FP32 (``ext.dequantize``) when the model
config says ``dequantize = true`` or the request carries the parameter
``dequantize = true``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

import ext
from edge_node.errors import InvalidInputError
from edge_node.runtime import TensorSpec
from edge_node.tasks.base import Signature, Task, TaskContext, TensorInfo, load_error

FP32 = np.dtype(np.float32)
QUANT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8))  # what ext (de)quantizes


def client_shape(spec: TensorSpec, signature: Signature) -> tuple[int, ...]:
    """The shape ModelMetadata shows for ``spec``: batch -1 when batched, else fixed."""
    return (-1, *spec.shape[1:]) if signature.batched else spec.shape


def convertible(spec: TensorSpec) -> bool:
    """True when ext can (de)quantize the tensor (int8/uint8 with a scale)."""
    return spec.quantized and spec.dtype in QUANT_DTYPES


class TensorTask(Task):
    """Pass-through serving of every model input and output."""

    kind = "tensor"

    def __init__(self, context: TaskContext):
        super().__init__(context)
        sig = context.signature
        if context.dequantize:
            odd = [o.name for o in sig.outputs if o.quantized and not convertible(o)]
            if odd:
                raise load_error(context, f"dequantize: output(s) {odd} are quantized "
                                 "int16/int32, which the node cannot dequantize; remove "
                                 "dequantize = true")
        self._dequantize = context.dequantize
        self.inputs = tuple(TensorInfo(s.name, s.dtype, client_shape(s, sig))
                            for s in sig.inputs)
        self.outputs = tuple(
            TensorInfo(s.name, FP32 if self._dequantize and convertible(s) else s.dtype,
                       client_shape(s, sig))
            for s in sig.outputs)
        self._specs = {s.name: s for s in sig.inputs}

    def accepted_dtypes(self, name: str) -> tuple[np.dtype, ...]:
        """The input's own dtype, and FP32 for an int8/uint8 quantized input."""
        spec = self._specs[name]
        return (spec.dtype, FP32) if convertible(spec) else (spec.dtype,)

    def check_declared(self, field: str, name: str, dtype: np.dtype | None,
                       shape: tuple[int, ...]) -> None:
        """The shape first (a missing batch dimension is named as such), then the rest."""
        if name in self._specs:
            check_shape(field, self._specs[name], self.signature, shape)
        super().check_declared(field, name, dtype, shape)

    def parameters(self) -> dict[str, str]:
        """The quantization of each quantized tensor, ``name: scale,zero_point``."""
        sig = self.signature
        return {f"quantization:{s.name}": f"{s.scale!r},{s.zero_point}"
                for s in (*sig.inputs, *sig.outputs) if s.quantized}

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> tuple[int, tuple[np.ndarray, ...]]:
        """Check every input's dtype and shape, quantize FP32 where the model is int8/uint8."""
        self.check_names(list(inputs))
        return model_inputs(self, self.signature.inputs, inputs)

    def finish(self, raw: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """The model's outputs, dequantized when the config says so."""
        if not self._dequantize:
            return raw
        return self._dequantized(raw)

    def respond(self, outputs: tuple[np.ndarray, ...],
                parameters: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        """Dequantize for a request with the parameter ``dequantize = true``."""
        if self._dequantize or parameters.get("dequantize") is not True:
            return outputs
        return self._dequantized(outputs)

    def _dequantized(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        return tuple(
            ext.dequantize(np.ascontiguousarray(a), s.scale, s.zero_point)
            if convertible(s) else a
            for s, a in zip(self.signature.outputs, arrays, strict=True))


def check_shape(field: str, spec: TensorSpec, signature: Signature,
                shape: tuple[int, ...]) -> None:
    """Refuse a tensor whose shape is not the model input's (any batch when batched)."""
    expected = client_shape(spec, signature)
    if len(shape) == len(expected) and all(
            e in (-1, a) for e, a in zip(expected, shape, strict=True)):
        return
    if signature.batched:
        hint = f" (-1: a batch of 1 to {signature.max_batch_size})"
        if tuple(shape) == tuple(expected[1:]):
            hint += "; the batch dimension is missing: send one item as [1, ...]"
    else:
        hint = " (this model takes one item per request, batch dimension included)"
    raise InvalidInputError(f"{field}.shape", f"input {spec.name!r} must be "
                            f"{list(expected)}{hint}, got {list(shape)}")


def model_inputs(task: Task, specs: tuple[TensorSpec, ...],
                 inputs: Mapping[str, np.ndarray]) -> tuple[int, tuple[np.ndarray, ...]]:
    """Each model input from the client tensor of its name: dtype and shape checked, FP32
    quantized for an int8/uint8 tensor; returns ``(rows, tensors in model order)``.

    Every input must have the same number of rows. Raises ``InvalidInputError``.
    """
    sig = task.signature
    rows = None
    tensors = []
    for i, spec in enumerate(specs):
        field = f"inputs[{i}]"
        array = inputs[spec.name]
        check_shape(field, spec, sig, array.shape)
        task.check_declared(field, spec.name, array.dtype, array.shape)
        n = int(array.shape[0]) if sig.batched else 1
        if rows is not None and n != rows:
            raise InvalidInputError(
                f"{field}.shape", f"input {spec.name!r} has {n} rows but the first input has "
                f"{rows}: every input needs the same batch")
        rows = n
        if array.dtype != spec.dtype:  # FP32 for an int8/uint8 quantized tensor
            array = ext.quantize(np.ascontiguousarray(array), spec.scale, spec.zero_point,
                                 spec.dtype)
        tensors.append(np.ascontiguousarray(array))
    return rows or 1, tuple(tensors)
