"""An MLServer custom runtime serving the float32 cloud model (a real third-party cloud tier).

Runs inside MLServer's own venv (``.venv-mlserver``, made by ``scripts/setup_mlserver.sh``),
never in edgeshard's: it imports only mlserver, numpy and ai_edge_litert. The test fixture
(``tests/cloud/conftest.py``) puts this directory on MLServer's ``PYTHONPATH`` and names
``mlserver_runtime.LiteRTClassifier`` as the model's ``implementation``.

Contract (deliberately not the edge node's):

* input ``image``: UINT8 ``[N,28,28]`` or ``[N,28,28,1]`` raw MNIST pixels;
* output ``probabilities``: FP32 ``[N,10]``, the softmax of the model's logits. No ``label``
  or ``confidence``: a coordinator must map the cloud's outputs itself.

Preprocessing is the edge node's, bit for bit:
``(float32(x) / float32(255) - float32(0.1307)) / float32(0.3081)``.

The model file comes from the model settings' ``parameters.uri`` (relative paths resolve
against the model-settings.json folder), or ``parameters.extra.model_path``.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

INPUT = "image"
OUTPUT = "probabilities"
MEAN = np.float32(0.1307)
STD = np.float32(0.3081)
SCALE = np.float32(255.0)


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """UINT8 [N,28,28] / [N,28,28,1] -> normalized float32 [N,28,28,1] (the node's formula)."""
    if pixels.dtype != np.uint8:
        raise InferenceError(f"input {INPUT!r} must be UINT8, got {pixels.dtype}")
    if pixels.ndim == 3:
        pixels = pixels[..., np.newaxis]
    if pixels.ndim != 4 or pixels.shape[1:] != (28, 28, 1):
        raise InferenceError(
            f"input {INPUT!r} must have shape [N,28,28] or [N,28,28,1], got {list(pixels.shape)}"
        )
    return (pixels.astype(np.float32) / SCALE - MEAN) / STD


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class LiteRTClassifier(MLModel):
    """One LiteRT interpreter; invocations are serialized by a lock, off the event loop."""

    async def load(self) -> bool:
        path = None
        params = self.settings.parameters
        if params is not None and params.uri:
            path = await get_model_uri(self.settings)
        elif params is not None and params.extra and params.extra.get("model_path"):
            path = params.extra["model_path"]
        if not path:
            raise InferenceError(
                f"model {self.name}: set parameters.uri (or parameters.extra.model_path)"
            )
        self._lock = threading.Lock()
        self._interpreter = Interpreter(model_path=str(path))
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = 0
        return True

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            if batch.shape[0] != self._batch:
                self._interpreter.resize_tensor_input(self._input, list(batch.shape))
                self._interpreter.allocate_tensors()
                self._batch = batch.shape[0]
            self._interpreter.set_tensor(self._input, batch)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output).copy()

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        unknown = [o.name for o in payload.outputs or [] if o.name != OUTPUT]
        if unknown:
            raise InferenceError(f"unknown output(s) {unknown}; the model has [{OUTPUT!r}]")
        inputs = {i.name: i for i in payload.inputs}
        if INPUT not in inputs:
            raise InferenceError(f"missing input {INPUT!r}; got {sorted(inputs)}")
        batch = preprocess(NumpyCodec.decode_input(inputs[INPUT]))
        if batch.shape[0] == 0:
            probabilities = np.zeros((0, 10), np.float32)
        else:
            logits = await asyncio.to_thread(self._invoke, batch)
            probabilities = softmax(logits)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(OUTPUT, probabilities)],
        )
