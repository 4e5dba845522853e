"""The interface every task implements, and what a task is built from.

A task turns client tensors into the model's input tensors and the model's output
tensors into client tensors, for one model version. It is pure: it knows nothing of
the transport, the batcher or the interpreter, so adding a task touches no servicer.
Each task is one module in ``edge_node.tasks`` registered in ``TASKS``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edge_node.errors import InvalidInputError, ModelLoadError
from edge_node.runtime import TensorSpec
from protos import codec


@dataclass(frozen=True)
class Signature:
    """A loaded model's tensors and how it batches.

    ``batched``: the first dimension of every tensor is a batch the interpreter can resize;
    ``max_batch_size``: the most rows one invocation takes (1 when not batched).
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool
    max_batch_size: int


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as clients see it: its OIP name, dtype and shape.

    ``shape`` is what ModelMetadata shows: the batch dimension is -1 when the model is
    batched; otherwise the full fixed shape.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    layout: str = "NONE"  # Triton's input format: "NHWC" for images, else "NONE"

    @property
    def datatype(self) -> str:
        """The OIP datatype name (``FP32``, ``INT8``, ``BYTES``...)."""
        return codec.datatype_of(self.dtype)


@dataclass(frozen=True)
class TaskContext:
    """What a task is built from: the model's config and the loaded version's facts.

    ``options`` is the whole parsed ``config.toml`` (``{}`` without one): a task reads its
    own tables from it; ``where`` names the file for errors; ``temperature`` is the
    calibrated softmax temperature (1.0 without calibration); ``labels`` are the class
    labels of the config (``()`` without).
    """

    name: str
    signature: Signature
    options: Mapping[str, Any]
    where: str
    labels: tuple[str, ...] = ()
    temperature: float = 1.0
    dequantize: bool = False


class Task:
    """One way of serving a model. Subclasses set ``kind``, ``inputs`` and ``outputs``.

    Construction validates the task's options against the model and raises
    ``ModelLoadError`` naming the config key. After that a task is stateless and shared
    by every worker thread.
    """

    kind: ClassVar[str]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def __init__(self, context: TaskContext):
        self.context = context
        self.signature = context.signature

    # -- what clients see ------------------------------------------------------------------
    def accepted_dtypes(self, name: str) -> tuple[np.dtype, ...]:
        """The dtypes input ``name`` accepts (the first is the one ModelMetadata shows)."""
        return (self.input_info(name).dtype,)

    def input_info(self, name: str) -> TensorInfo:
        """The input called ``name``; ``KeyError`` when there is none."""
        for info in self.inputs:
            if info.name == name:
                return info
        raise KeyError(name)

    def parameters(self) -> dict[str, str]:
        """Extra ModelConfig parameters this task reports (strings)."""
        return {}

    # -- requests --------------------------------------------------------------------------
    def check_names(self, names: Sequence[str]) -> None:
        """Refuse a request whose input names are not exactly this task's inputs."""
        expected = [i.name for i in self.inputs]
        unknown = [n for n in names if n not in expected]
        missing = [n for n in expected if n not in names]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown input(s) {unknown}")
            if missing:
                parts.append(f"missing input(s) {missing}")
            raise InvalidInputError(
                "inputs", f"{'; '.join(parts)}: {self.context.name} takes {expected}")

    def check_declared(self, field: str, name: str, dtype: np.dtype | None,
                       shape: tuple[int, ...]) -> None:
        """Refuse a tensor by what the request declares, before its data is decoded.

        ``dtype`` None (a datatype the codec does not know) is left to the codec. Raises
        ``InvalidInputError`` naming ``field``.
        """
        try:
            accepted = self.accepted_dtypes(name)
        except KeyError:
            raise InvalidInputError(
                f"{field}.name", f"unknown input {name!r}; {self.context.name} takes "
                f"{[i.name for i in self.inputs]}") from None
        if dtype is not None and dtype not in accepted:
            shown = ", ".join(codec.datatype_of(d) for d in accepted)
            got = "BYTES" if dtype == np.dtype(object) else codec.datatype_of(dtype)
            raise InvalidInputError(
                f"{field}.datatype",
                f"{got} is not accepted for input {name!r} of {self.context.name}; use {shown}")
        self.check_rows(field, shape)

    def check_rows(self, field: str, shape: tuple[int, ...]) -> int:
        """The rows (batch) of a tensor of ``shape``; refuse an empty or too large batch."""
        sig = self.signature
        if not sig.batched:
            return 1
        if not shape or shape[0] == 0:
            raise InvalidInputError(f"{field}.shape", "empty batch: need at least one item")
        if shape[0] > sig.max_batch_size:
            raise InvalidInputError(
                f"{field}.shape",
                f"batch of {shape[0]} exceeds max_batch_size {sig.max_batch_size} of "
                f"{self.context.name}")
        return int(shape[0])

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> tuple[int, tuple[np.ndarray, ...]]:
        """Validate the client tensors; return ``(rows, model input tensors in model order)``.

        Raises ``InvalidInputError`` naming the input.
        """
        raise NotImplementedError

    def finish(self, raw: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """The model's outputs for a batch -> this task's outputs, row-aligned, in order."""
        raise NotImplementedError

    def confidences(self, outputs: tuple[np.ndarray, ...]) -> np.ndarray | None:
        """The top-1 confidence per row of a request's outputs, for drift monitoring
        (None: this task gives none)."""
        return None

    def respond(self, outputs: tuple[np.ndarray, ...],
                parameters: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        """One request's outputs, adjusted by its request ``parameters`` (default: as is)."""
        return outputs


def load_error(context: TaskContext, message: str) -> ModelLoadError:
    """A ``ModelLoadError`` for a task option or a model the task cannot serve."""
    return ModelLoadError(f"{context.where}: {message}")
