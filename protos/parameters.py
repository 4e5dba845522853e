"""Open Inference Protocol parameters (``InferParameter`` maps) <-> Python values.

Request and response parameters (``routing_key``, ``model_version``, ``node``, ``tier``...)
are a oneof per key; these helpers read and write them as plain Python values.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np

from protos import oip_pb2

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT64_MAX = 2**64 - 1


def get_param(params: Mapping[str, oip_pb2.InferParameter], key: str, default: Any = None) -> Any:
    """The Python value of ``params[key]`` (bool, int, str or float); ``default`` if unset."""
    if key not in params:
        return default
    param = params[key]
    which = param.WhichOneof("parameter_choice")
    if which is None:
        return default
    return getattr(param, which)


def set_param(
    params: MutableMapping[str, oip_pb2.InferParameter], key: str, value: bool | int | str | float
) -> None:
    """Set ``params[key]`` from a Python (or NumPy scalar) bool, int, str or float.

    Ints use int64_param, or uint64_param when they only fit unsigned 64 bits.
    """
    field: str
    if isinstance(value, bool | np.bool_):
        field, value = "bool_param", bool(value)
    elif isinstance(value, int | np.integer):
        value = int(value)
        if _INT64_MIN <= value <= _INT64_MAX:
            field = "int64_param"
        elif 0 <= value <= _UINT64_MAX:
            field = "uint64_param"
        else:
            raise ValueError(f"parameter {key!r}: {value} does not fit in 64 bits")
    elif isinstance(value, str):
        field = "string_param"
    elif isinstance(value, float | np.floating):
        field, value = "double_param", float(value)
    else:
        raise TypeError(
            f"parameter {key!r}: expected bool, int, str or float, got {type(value).__name__}"
        )
    # Setting one member of the oneof clears any other.
    setattr(params[key], field, value)
