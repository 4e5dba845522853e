"""From client tensors to model tensors and back, for a classification model.

Accepted inputs (one tensor, named as the model config's ``input.name``):

* UINT8 raw images ``[N,H,W]`` (single channel) or ``[N,H,W,C]`` of any H and W: resized
  (bilinear, half-pixel centres), normalized and quantized in one pass by ``ext.preprocess``;
* FP32 tensors already normalized, ``[N,h,w,c]`` (or ``[N,h,w]`` when c = 1) at the model's
  exact size: quantized by ``ext.quantize`` for an integer model, passed through otherwise;
* the model's native quantized dtype (INT8) at the exact size: passed through.

For a model whose native input is UINT8, UINT8 tensors are treated as raw images.
Outputs: ``probabilities`` FP32 [N,K], ``label`` INT64 [N], ``confidence`` FP32 [N]
(the top-1 probability). Logit models get softmax with the version's calibrated
temperature (``calibration.json`` next to the model file, 1.0 without one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

import ext
from edge_node.errors import InvalidInputError
from edge_node.repository import ModelVersion

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("probabilities", "label", "confidence")


@dataclass(frozen=True)
class Outputs:
    """A batch's outputs, row-aligned with its inputs.

    ``probabilities`` float32 ``[N, K]``, ``label`` int64 ``[N]``, ``confidence`` float32
    ``[N]`` (the top-1 probability).
    """

    probabilities: np.ndarray
    label: np.ndarray
    confidence: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        """The outputs by their OIP output names."""
        return {
            "probabilities": self.probabilities,
            "label": self.label,
            "confidence": self.confidence,
        }


class Pipeline:
    """Pre- and post-processing of one model version. Stateless after construction."""

    def __init__(self, version: ModelVersion):
        self.version = version
        spec = version.spec
        self.shape = (spec.height, spec.width, spec.channels)
        self.mean = np.asarray(spec.mean, dtype=np.float32)
        self.std = np.asarray(spec.std, dtype=np.float32)
        self.in_dtype = version.input.dtype
        self.temperature = version.temperature
        self.apply_softmax = spec.output_kind == "logits"

    def check_declared(self, field: str, dtype: np.dtype | None,
                       shape: tuple[int, ...]) -> None:
        """Refuse a tensor by what the request declares, before its data is decoded: a
        dtype this model never takes, or a batch above its ``max_batch_size``. Raises
        ``InvalidInputError`` as ``prepare`` would; ``dtype`` None (a datatype the codec
        does not know) is left to the codec, which names it."""
        spec = self.version.spec
        accepted = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(self.in_dtype))
        if dtype is not None and dtype not in accepted:
            self._refuse_dtype(field, dtype)
        if shape and shape[0] > spec.max_batch_size:
            raise InvalidInputError(
                f"{field}.shape",
                f"batch of {shape[0]} exceeds max_batch_size {spec.max_batch_size} of {spec.name}",
            )

    def _refuse_dtype(self, field: str, dtype: np.dtype) -> None:
        native = {np.dtype(np.int8): "INT8"}.get(np.dtype(self.in_dtype))
        accepted = "UINT8 (raw images), FP32 (normalized)" + (f", {native}" if native else "")
        name = "BYTES" if dtype == np.dtype(object) else str(dtype)
        raise InvalidInputError(
            f"{field}.datatype",
            f"{name} is not accepted by {self.version.spec.name}; use {accepted}")

    def prepare(self, field: str, array: np.ndarray) -> np.ndarray:
        """Validate one client tensor and turn it into the model's input tensor."""
        if array.ndim == 0 or array.shape[0] == 0:
            raise InvalidInputError(f"{field}.shape", "empty batch: need at least one item")
        self.check_declared(field, array.dtype, array.shape)  # an accepted dtype, batch size
        if array.dtype == np.uint8:
            return self._from_images(field, array)
        if array.dtype == np.float32:
            x = self._exact_shape(field, array, "FP32")
            if not np.isfinite(x).all():
                raise InvalidInputError(field, "FP32 input contains NaN or Inf")
            if self.in_dtype == np.float32:
                return np.ascontiguousarray(x)
            q = self.version.input
            return ext.quantize(x, q.scale, q.zero_point, self.in_dtype)
        return np.ascontiguousarray(self._exact_shape(field, array, "native"))  # in_dtype

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
                + f", got {list(images.shape)}; {self.version.spec.name} takes {c} "
                "channel(s): convert the images first (a node never drops or invents channels)",
            )
        if min(images.shape[1:3]) < 1:
            raise InvalidInputError(f"{field}.shape", "image height and width must be >= 1")
        q = self.version.input
        return ext.preprocess(
            np.ascontiguousarray(images), h, w, self.mean, self.std,
            q.scale, q.zero_point, self.in_dtype,
        )

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
        return array

    def finish(self, raw: np.ndarray) -> Outputs:
        """Model output [N,K] -> probabilities, labels and confidences (batched)."""
        out = self.version.output
        probs, labels, conf = ext.postprocess(
            np.ascontiguousarray(raw), out.scale, out.zero_point,
            self.temperature, self.apply_softmax,
        )
        return Outputs(probs, labels, conf)
