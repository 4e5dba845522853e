"""edgeshard's numeric core: image preprocessing, (de)quantization, score and box math,
and the window statistics of drift monitoring.

Two implementations with identical signatures and results:

* ``"cython"``: the compiled kernels in ``ext._image``, ``ext._scores``, ``ext._boxes`` and
  ``ext._drift``
  (GIL released while they run);
* ``"reference"``: ``ext._reference``, vectorized NumPy, which is the spec.

``IMPLEMENTATION`` names the one in use; ``SIMD`` the instruction set the compiled
resize runs with on this CPU (``avx512``, ``avx2``, ``sse2``, ``neon``, ``generic``;
chosen when the module loads) or ``none`` for the reference. Setting ``EDGESHARD_PUREPYTHON=1``
forces the reference; it is read once, at import time (the one module-level
environment read in edgeshard, so the whole test suite can run against the
reference). If the compiled modules cannot be imported, the reference is used
and a warning is logged.
"""

import logging
import os

from ext import _reference
from ext._results import Confidence as Confidence  # re-exported (the spec's result types)
from ext._results import WindowStats as WindowStats

# The reference is the spec, so the public API is its API (less a table helper the
# kernels do not export), plus the name of the implementation in use.
__all__ = ["IMPLEMENTATION", "SIMD", *(n for n in _reference.__all__ if n != "axis_table")]

log = logging.getLogger(__name__)


def _select():
    """Return ``(name, image, scores, boxes, drift modules)`` for the implementation."""
    if os.environ.get("EDGESHARD_PUREPYTHON") == "1":
        return "reference", _reference, _reference, _reference, _reference
    try:
        from ext import _boxes, _drift, _image, _scores
    except ImportError as exc:
        log.warning("ext: compiled kernels unavailable (%s); using the NumPy reference", exc)
        return "reference", _reference, _reference, _reference, _reference
    return "cython", _image, _scores, _boxes, _drift


IMPLEMENTATION, _image_impl, _scores_impl, _boxes_impl, _drift_impl = _select()
SIMD = getattr(_image_impl, "SIMD", "none")

resize_bilinear = _image_impl.resize_bilinear
normalize = _image_impl.normalize
quantize = _image_impl.quantize
dequantize = _image_impl.dequantize
preprocess = _image_impl.preprocess
make_lut = _image_impl.make_lut
softmax = _scores_impl.softmax
confidence = _scores_impl.confidence
postprocess = _scores_impl.postprocess
decode_boxes = _boxes_impl.decode_boxes
nms = _boxes_impl.nms
window_stats = _drift_impl.window_stats
