"""NumPy arrays <-> Open Inference Protocol tensors.

The codec works on the generated messages only and knows nothing of gRPC, so
servicers and clients share one implementation of the protocol's tensor rules:

* A tensor's values travel either as raw little-endian row-major bytes
  (``raw_input_contents[i]`` / ``raw_output_contents[i]``, parallel to the
  tensor list) or as the typed list in ``contents`` that matches the
  datatype. If a request uses raw contents, every input must (the protocol
  forbids mixing), and no input may also carry typed values.
* ``BYTES`` elements are encoded raw as a 4-byte little-endian length followed
  by the bytes; they decode to an object array of ``bytes``.
* ``FP16`` has no typed list: raw only.

Decoding validates everything a client controls and raises ``TensorError``
with the path of the offending field (``inputs[0].shape``,
``raw_input_contents[1]``), so a servicer can map it to INVALID_ARGUMENT
with a message the client can act on. Raw numeric tensors decode zero-copy:
the array is a read-only view of the message's bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from protos import oip_pb2

InferInputTensor = oip_pb2.ModelInferRequest.InferInputTensor
InferOutputTensor = oip_pb2.ModelInferResponse.InferOutputTensor

_LENGTH_PREFIX = struct.Struct("<I")
# No tensor can be larger: gRPC refuses messages of 2 GiB or more. A shape whose
# elements would need more (its zero dimensions counted as 1, so that [0, 2^40, 2^40]
# is caught too) is refused before anything is allocated for it.
MAX_TENSOR_BYTES = 2**31 - 1


class TensorError(ValueError):
    """A tensor in a request or response breaks the protocol's rules; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Datatype:
    """One OIP datatype: its wire name, NumPy dtype and typed contents field."""

    name: str
    dtype: np.dtype
    contents_field: str | None
    """Field of InferTensorContents holding typed values; None = raw only."""


def _dt(name: str, dtype: str, field: str | None) -> Datatype:
    return Datatype(name, np.dtype(dtype), field)


DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        _dt("BOOL", "?", "bool_contents"),
        _dt("UINT8", "u1", "uint_contents"),
        _dt("UINT16", "<u2", "uint_contents"),
        _dt("UINT32", "<u4", "uint_contents"),
        _dt("UINT64", "<u8", "uint64_contents"),
        _dt("INT8", "i1", "int_contents"),
        _dt("INT16", "<i2", "int_contents"),
        _dt("INT32", "<i4", "int_contents"),
        _dt("INT64", "<i8", "int64_contents"),
        _dt("FP16", "<f2", None),
        _dt("FP32", "<f4", "fp32_contents"),
        _dt("FP64", "<f8", "fp64_contents"),
        _dt("BYTES", "O", "bytes_contents"),
    )
}
"""The OIP datatypes edgeshard supports, keyed by wire name."""

_BY_KIND_SIZE = {
    (d.dtype.kind, d.dtype.itemsize): d for d in DATATYPES.values() if d.name != "BYTES"
}


def datatype_of(dtype: np.dtype | type) -> str:
    """The OIP datatype name for a NumPy dtype (any byte order); TypeError if none."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    found = _BY_KIND_SIZE.get((dtype.kind, dtype.itemsize))
    if found is None:
        raise TypeError(f"NumPy dtype {dtype} has no Open Inference Protocol datatype")
    return found.name


def dtype_of(datatype: str) -> np.dtype:
    """The little-endian NumPy dtype for an OIP datatype name; KeyError if unknown."""
    return DATATYPES[datatype].dtype


# --- decoding ---------------------------------------------------------------------------


def lookup(datatype: str, field: str) -> Datatype:
    """The ``Datatype`` of a wire name; TensorError naming ``field`` when it is unsupported."""
    found = DATATYPES.get(datatype)
    if found is None:
        raise TensorError(
            field, f"unsupported datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        )
    return found


def _shape(shape: Sequence[int], field: str, spec: Datatype) -> tuple[int, ...]:
    """The validated shape: no negative dimension, and a size that could fit a message.

    BYTES elements need at least their 4-byte length prefix each.
    """
    dims = tuple(shape)
    if any(d < 0 for d in dims):
        raise TensorError(field, f"dimensions must be >= 0, got {list(dims)}")
    element = _LENGTH_PREFIX.size if spec.name == "BYTES" else spec.dtype.itemsize
    declared = math.prod(max(d, 1) for d in dims) * element
    if declared > MAX_TENSOR_BYTES:
        raise TensorError(
            field,
            f"{spec.name} shape {list(dims)} declares {declared} bytes; no tensor may exceed "
            f"{MAX_TENSOR_BYTES} bytes (gRPC's message limit)",
        )
    return dims


def _has_typed_contents(tensor: Any) -> bool:
    return tensor.HasField("contents") and bool(tensor.contents.ListFields())


def _decode_raw_bytes(raw: bytes, count: int, field: str) -> np.ndarray:
    # Elements are collected as they are read, so memory follows the bytes present, never
    # the declared count: a count the data cannot back fails at the first missing element.
    elements: list[bytes] = []
    view = memoryview(raw)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise TensorError(
                field, f"BYTES data ends after {i} of {count} elements (at byte {offset})"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise TensorError(
                field,
                f"BYTES element {i} declares {length} bytes but only {len(view) - offset} remain",
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise TensorError(
            field, f"{len(view) - offset} trailing bytes after {count} BYTES elements"
        )
    out = np.empty(count, dtype=object)
    out[:] = elements
    return out


def _decode_raw(raw: bytes, spec: Datatype, shape: tuple[int, ...], field: str) -> np.ndarray:
    count = math.prod(shape)
    if spec.name == "BYTES":
        return _decode_raw_bytes(raw, count, field).reshape(shape)
    expected = count * spec.dtype.itemsize
    if len(raw) != expected:
        raise TensorError(
            field,
            f"expected {expected} bytes for {spec.name} shape {list(shape)}, got {len(raw)}",
        )
    # Zero-copy: a read-only view of the message's bytes object.
    return np.frombuffer(raw, dtype=spec.dtype).reshape(shape)


def decode_array(field: str, datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """Raw little-endian contents with an OIP datatype and shape -> array (read-only view).

    For raw tensors outside a ModelInferRequest (e.g. job item batches); TensorError names
    ``field`` on an unknown datatype, a negative dimension or a byte count that does not
    match the shape.
    """
    spec = lookup(datatype, f"{field}.datatype")
    return _decode_raw(raw, spec, _shape(shape, f"{field}.shape", spec), f"{field}.data")


def encode_array(array: Any, field: str = "array") -> tuple[str, list[int], bytes]:
    """(OIP datatype, shape, raw little-endian bytes) of ``array``; inverse of decode_array."""
    return _encode_array(array, field)


def _decode_typed(tensor: Any, spec: Datatype, shape: tuple[int, ...], field: str) -> np.ndarray:
    if spec.contents_field is None:
        raise TensorError(
            f"{field}.contents", f"{spec.name} has no typed contents; send it as raw contents"
        )
    path = f"{field}.contents.{spec.contents_field}"
    values = getattr(tensor.contents, spec.contents_field)
    count = math.prod(shape)
    if len(values) != count:
        raise TensorError(
            path, f"expected {count} values for shape {list(shape)}, got {len(values)}"
        )
    if spec.name == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    if spec.dtype.kind in "iu" and spec.dtype.itemsize < 4:
        # int_contents / uint_contents are 32-bit lists: narrower types must fit.
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(spec.dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise TensorError(path, f"value out of range for {spec.name} [{info.min}, {info.max}]")
        return wide.astype(spec.dtype).reshape(shape)
    return np.array(values, dtype=spec.dtype).reshape(shape)


def _check_raw_count(
    tensors: Sequence[Any], raws: Sequence[bytes], kind: str, raw_kind: str
) -> None:
    if raws and len(raws) != len(tensors):
        raise TensorError(
            raw_kind,
            f"got {len(raws)} entries for {len(tensors)} {kind}; when raw contents are used "
            f"every tensor must have exactly one",
        )


def _decode_one(tensor: Any, raw: bytes | None, i: int, kind: str, raw_kind: str) -> np.ndarray:
    field = f"{kind}[{i}]"
    spec = lookup(tensor.datatype, f"{field}.datatype")
    shape = _shape(tensor.shape, f"{field}.shape", spec)
    if raw is None:
        return _decode_typed(tensor, spec, shape, field)
    if _has_typed_contents(tensor):
        raise TensorError(f"{field}.contents", f"typed contents cannot be combined with {raw_kind}")
    return _decode_raw(raw, spec, shape, f"{raw_kind}[{i}]")


def _decode_tensors(
    tensors: Sequence[Any], raws: Sequence[bytes], kind: str, raw_kind: str
) -> dict[str, np.ndarray]:
    _check_raw_count(tensors, raws, kind, raw_kind)
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(tensors):
        if tensor.name in arrays:
            raise TensorError(f"{kind}[{i}].name", f"duplicate {kind[:-1]} name {tensor.name!r}")
        raw = raws[i] if raws else None
        arrays[tensor.name] = _decode_one(tensor, raw, i, kind, raw_kind)
    return arrays


def decode_inputs(request: oip_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's input tensors by name, in request order.

    Raw numeric inputs are read-only views of the request's bytes (copy
    before writing in place). Raises TensorError on any protocol violation.
    """
    return _decode_tensors(
        request.inputs, request.raw_input_contents, "inputs", "raw_input_contents"
    )


def decode_outputs(response: oip_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    """All of a response's output tensors by name, in response order."""
    return _decode_tensors(
        response.outputs, response.raw_output_contents, "outputs", "raw_output_contents"
    )


def decode_output(response: oip_pb2.ModelInferResponse, name: str) -> np.ndarray:
    """One output tensor of a response; TensorError (field ``outputs``) if it is absent."""
    raws = response.raw_output_contents
    _check_raw_count(response.outputs, raws, "outputs", "raw_output_contents")
    for i, tensor in enumerate(response.outputs):
        if tensor.name == name:
            raw = raws[i] if raws else None
            return _decode_one(tensor, raw, i, "outputs", "raw_output_contents")
    names = [t.name for t in response.outputs]
    raise TensorError("outputs", f"response has no output {name!r}; it has {names}")


# --- encoding ---------------------------------------------------------------------------


def _element_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, np.bytes_):
        return bytes(value)
    return str(value).encode("utf-8")


def _encode_array(array: Any, field: str) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw bytes) of ``array``."""
    array = np.asarray(array)
    try:
        datatype = datatype_of(array.dtype)
    except TypeError as exc:
        raise TensorError(field, str(exc)) from None
    shape = list(array.shape)
    if datatype == "BYTES":
        parts = []
        for value in array.reshape(-1):
            data = _element_bytes(value)
            parts.append(_LENGTH_PREFIX.pack(len(data)))
            parts.append(data)
        return datatype, shape, b"".join(parts)
    wire = np.ascontiguousarray(array, dtype=DATATYPES[datatype].dtype)
    return datatype, shape, wire.tobytes()


def encode_input_tensor(name: str, array: Any) -> tuple[InferInputTensor, bytes]:
    """An input tensor and its raw contents, to append to a ModelInferRequest.

    Append the tensor to ``request.inputs`` and the bytes to
    ``request.raw_input_contents`` at the same index.
    """
    datatype, shape, raw = _encode_array(array, f"inputs[{name!r}].datatype")
    return InferInputTensor(name=name, datatype=datatype, shape=shape), raw


def requested_outputs(request: oip_pb2.ModelInferRequest) -> list[str]:
    """The output names ``request`` asks for, in order (empty: every output).

    Raises TensorError naming ``outputs[i].name`` for an empty name or a name asked for
    twice (a response cannot hold two tensors of one name).
    """
    names: list[str] = []
    for i, output in enumerate(request.outputs):
        if not output.name:
            raise TensorError(f"outputs[{i}].name", "empty; name the output to return")
        if output.name in names:
            raise TensorError(
                f"outputs[{i}].name",
                f"output {output.name!r} is requested twice; ask for each output once",
            )
        names.append(output.name)
    return names


def encode_outputs(
    response: oip_pb2.ModelInferResponse,
    outputs: Mapping[str, Any],
    requested: Iterable[str] | None = None,
) -> None:
    """Append ``outputs`` to ``response`` as tensors with raw contents.

    ``requested`` (the names in ``ModelInferRequest.outputs``) selects and
    orders the outputs; None or empty means all, in mapping order. An unknown
    requested name raises TensorError naming ``outputs[i].name`` of the
    request.
    """
    names = list(requested) if requested else list(outputs)
    for i, name in enumerate(names):
        if name in names[:i]:
            raise TensorError(f"outputs[{i}].name", f"output {name!r} is requested twice")
        if name not in outputs:
            raise TensorError(
                f"outputs[{i}].name",
                f"unknown output {name!r}; the model has {sorted(outputs)}",
            )
    for name in names:
        datatype, shape, raw = _encode_array(outputs[name], f"outputs[{name!r}].datatype")
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(raw)
