"""``task = "classification"``: an image classifier with class probabilities, label and
confidence (the node's original behaviour).

Accepted input (one tensor, named as ``input.name`` of the config, else the model's
input tensor name):

* UINT8 raw images ``[N,H,W]`` (single channel) or ``[N,H,W,C]`` of any H and W: resized
  (bilinear, half-pixel centres), normalized with ``input.mean``/``input.std`` and
  quantized in one pass by ``ext.preprocess``;
* FP32 tensors already normalized, ``[N,h,w,c]`` (or ``[N,h,w]`` when c = 1) at the model's
  exact size: quantized by ``ext.quantize`` for an integer model, passed through otherwise;
* the model's native quantized dtype (INT8) at the exact size: passed through.

For a model whose native input is UINT8, UINT8 tensors are treated as raw images.
Outputs: ``probabilities`` FP32 [N,K], ``label`` INT64 [N], ``confidence`` FP32 [N]
(the top-1 probability). With ``output.kind = "logits"`` (the default) the node applies
softmax at the version's calibrated temperature (``calibration.json``, 1.0 without).

Config keys (all optional; the model file gives the rest): ``[input]`` ``name``,
``height``, ``width``, ``channels`` (must match the model), ``mean`` and ``std`` (per
channel or one value, applied to ``pixel / 255``; default 0 and 1); ``[output]``
``kind`` (``"logits"`` or ``"probabilities"``) and ``labels`` (or a top-level ``labels``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

import ext
from edge_node.errors import InvalidInputError
from edge_node.model_config import check_keys
from edge_node.tasks.base import Task, TaskContext, TensorInfo, load_error

OUTPUT_NAMES = ("probabilities", "label", "confidence")
IMAGE_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.float32))


class ClassificationTask(Task):
    """Image preprocessing in, probabilities / label / confidence out."""

    kind = "classification"

    def __init__(self, context: TaskContext):
        super().__init__(context)
        sig = context.signature
        if len(sig.inputs) != 1 or len(sig.outputs) != 1:
            raise load_error(context, f"task 'classification' needs one input and one output "
                             f"tensor; the model has {len(sig.inputs)} and {len(sig.outputs)} "
                             "(serve it with task = \"tensor\")")
        self.model_input, self.model_output = sig.inputs[0], sig.outputs[0]
        inp = _table(context, "input")
        out = _table(context, "output")
        check_keys(context.where, "input.", inp,
                   ("name", "layout", "height", "width", "channels", "mean", "std"))
        check_keys(context.where, "output.", out, ("name", "kind", "labels"))
        shape = self.model_input.shape
        if len(shape) not in (3, 4) or self.model_input.dtype not in IMAGE_DTYPES:
            raise load_error(context, f"task 'classification' needs an image input [N,H,W,C] "
                             f"of int8, uint8 or float32; the model's is {list(shape)} "
                             f"{self.model_input.dtype} (serve it with task = \"tensor\")")
        if len(self.model_output.shape) != 2:
            raise load_error(context, f"output must be [N, classes], got "
                             f"{list(self.model_output.shape)} (serve it with task = \"tensor\")")
        model_hwc = (*shape[1:3], shape[3] if len(shape) == 4 else 1)
        declared = tuple(_int(context, inp, k, d) for k, d in
                         zip(("height", "width", "channels"), model_hwc, strict=True))
        if declared != model_hwc:
            raise load_error(context, f"input tensor shape {list(shape)} does not match config "
                             f"[N,{declared[0]},{declared[1]},{declared[2]}]")
        if inp.get("layout", "NHWC") != "NHWC":
            raise load_error(context, f"input.layout must be 'NHWC', got {inp['layout']!r}")
        self.shape = model_hwc
        channels = model_hwc[2]
        self.mean = _floats(context, inp, "mean", channels)
        self.std = _floats(context, inp, "std", channels)
        if any(not math.isfinite(s) or s <= 0 for s in self.std):
            raise load_error(context, "input.std values must be > 0")
        kind = out.get("kind", "logits")
        if kind not in ("logits", "probabilities"):
            raise load_error(context, f"output.kind must be 'logits' or 'probabilities', "
                             f"got {kind!r}")
        self.apply_softmax = kind == "logits"
        classes = int(self.model_output.shape[-1])
        if context.labels and len(context.labels) != classes:
            raise load_error(context, f"{len(context.labels)} labels in config but the model "
                             f"has {classes} classes")
        self.num_classes = classes
        self.in_dtype = self.model_input.dtype
        name = inp.get("name", self.model_input.name)
        if not isinstance(name, str) or not name:
            raise load_error(context, f"input.name must be a non-empty string, got {name!r}")
        batch = -1 if sig.batched else 1
        self.inputs = (TensorInfo(name, np.dtype(np.uint8), (batch, *model_hwc), "NHWC"),)
        self.outputs = (
            TensorInfo("probabilities", np.dtype(np.float32), (batch, classes)),
            TensorInfo("label", np.dtype(np.int64), (batch,)),
            TensorInfo("confidence", np.dtype(np.float32), (batch,)),
        )

    def accepted_dtypes(self, name: str) -> tuple[np.dtype, ...]:
        """UINT8 images, FP32 normalized tensors and the model's own input dtype."""
        self.input_info(name)
        return tuple(dict.fromkeys((np.dtype(np.uint8), np.dtype(np.float32),
                                    np.dtype(self.in_dtype))))

    def parameters(self) -> dict[str, str]:
        """Labels, the model's input dtype and the served temperature."""
        return {"labels": ",".join(self.context.labels),
                "input_dtype": str(self.in_dtype),
                "temperature": repr(self.context.temperature)}

    def check_rows(self, field: str, shape: tuple[int, ...]) -> int:
        """Rows of an image batch: at least one, at most ``max_batch_size``."""
        if not shape or shape[0] == 0:
            raise InvalidInputError(f"{field}.shape", "empty batch: need at least one item")
        limit = self.signature.max_batch_size
        if shape[0] > limit:
            raise InvalidInputError(
                f"{field}.shape",
                f"batch of {shape[0]} exceeds max_batch_size {limit} of {self.context.name}")
        return int(shape[0])

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> tuple[int, tuple[np.ndarray, ...]]:
        """Validate the one client tensor and turn it into the model's input tensor."""
        self.check_names(list(inputs))
        name = self.inputs[0].name
        field = "inputs[0]"
        array = inputs[name]
        if array.ndim == 0:
            raise InvalidInputError(f"{field}.shape", "empty batch: need at least one item")
        self.check_declared(field, name, array.dtype, array.shape)
        rows = int(array.shape[0])
        if array.dtype == np.uint8:
            return rows, (self._from_images(field, array),)
        if array.dtype == np.float32:
            x = self._exact_shape(field, array, "FP32")
            if not np.isfinite(x).all():
                raise InvalidInputError(field, "FP32 input contains NaN or Inf")
            if self.in_dtype == np.float32:
                return rows, (np.ascontiguousarray(x),)
            q = self.model_input
            return rows, (ext.quantize(x, q.scale, q.zero_point, self.in_dtype),)
        return rows, (np.ascontiguousarray(self._exact_shape(field, array, "native")),)

    def _from_images(self, field: str, images: np.ndarray) -> np.ndarray:
        h, w, c = self.shape
        if images.ndim == 3:
            if c != 1:
                raise InvalidInputError(
                    f"{field}.shape", f"[N,H,W] images need a 1-channel model; this one has {c}"
                )
        elif images.ndim != 4 or images.shape[3] != c:
            raise InvalidInputError(
                f"{field}.shape",
                f"UINT8 images must be [N,H,W,{c}]" + (" or [N,H,W]" if c == 1 else "")
                + f", got {list(images.shape)}; {self.context.name} takes {c} "
                "channel(s): convert the images first (a node never drops or invents channels)",
            )
        if min(images.shape[1:3]) < 1:
            raise InvalidInputError(f"{field}.shape", "image height and width must be >= 1")
        q = self.model_input
        out = ext.preprocess(np.ascontiguousarray(images), h, w, self.mean, self.std,
                             q.scale, q.zero_point, self.in_dtype)
        return out if len(q.shape) == 4 else out.reshape(out.shape[:3])

    def _exact_shape(self, field: str, array: np.ndarray, kind: str) -> np.ndarray:
        h, w, c = self.shape
        if array.ndim == 3 and c == 1:
            array = array.reshape(array.shape + (1,))
        if array.shape[1:] != self.shape:
            raise InvalidInputError(
                f"{field}.shape",
                f"{kind} input must be [N,{h},{w},{c}], got {list(array.shape)} "
                "(send UINT8 images to have them resized)",
            )
        return array if len(self.model_input.shape) == 4 else array.reshape(array.shape[:3])

    def finish(self, raw: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """Model output [N,K] -> probabilities, labels and confidences (batched)."""
        out = self.model_output
        return ext.postprocess(np.ascontiguousarray(raw[0]), out.scale, out.zero_point,
                               self.context.temperature, self.apply_softmax)


    def confidences(self, outputs: tuple[np.ndarray, ...]) -> np.ndarray | None:
        """The ``confidence`` output (top-1 probability per row)."""
        return outputs[2]


def _table(context: TaskContext, key: str) -> dict:
    value = context.options.get(key, {})
    if not isinstance(value, dict):
        raise load_error(context, f"[{key}] must be a table, got {value!r}")
    return value


def _int(context: TaskContext, table: dict, key: str, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise load_error(context, f"input.{key} must be an int >= 1, got {value!r}")
    return value


def _floats(context: TaskContext, table: dict, key: str, channels: int) -> np.ndarray:
    default = [0.0] if key == "mean" else [1.0]
    values = table.get(key, default)
    if (not isinstance(values, list) or len(values) not in (1, channels)
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)):
        count = "1 number" if channels == 1 else f"1 or {channels} numbers (one per channel)"
        raise load_error(context, f"input.{key} needs {count}, got {values!r}")
    return np.asarray(values, dtype=np.float32)
