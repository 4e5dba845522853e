"""Fixtures for the ext tests: every available implementation of the public API."""

import types

import pytest

import ext
from ext import _reference

PUBLIC = (
    "resize_bilinear",
    "normalize",
    "quantize",
    "dequantize",
    "make_lut",
    "preprocess",
    "softmax",
    "confidence",
    "postprocess",
)


def compiled_namespace() -> types.SimpleNamespace:
    """The compiled kernels as one namespace (only call when ext.IMPLEMENTATION == "cython")."""
    from ext import _image, _scores

    modules = (_image, _scores)
    return types.SimpleNamespace(
        name="cython",
        **{name: next(getattr(m, name) for m in modules if hasattr(m, name)) for name in PUBLIC},
    )


def reference_namespace() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        name="reference", **{name: getattr(_reference, name) for name in PUBLIC}
    )


def _implementations() -> list[types.SimpleNamespace]:
    impls = [reference_namespace()]
    if ext.IMPLEMENTATION == "cython":
        impls.append(compiled_namespace())
    return impls


@pytest.fixture(params=_implementations(), ids=lambda ns: ns.name)
def impl(request) -> types.SimpleNamespace:
    """One implementation of the ext API (reference always; cython when it is in use)."""
    return request.param
