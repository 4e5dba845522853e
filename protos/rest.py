"""The Open Inference Protocol's HTTP/REST binding (KServe v2, Triton) <-> its messages.

Both daemons serve REST by turning each request into the message their gRPC servicer
takes and the answer back into JSON, so the two bindings share every rule the servicers
and the codec enforce. This module is that conversion and nothing else: no sockets.

Inference requests follow the KServe v2 JSON schema with Triton's extensions:

* ``inputs[i].data`` holds the tensor's elements flat or nested (row-major), numbers for
  numeric datatypes, ``true``/``false`` for ``BOOL``, strings for ``BYTES`` (UTF-8).
* The binary tensor data extension: the body is the JSON header
  (``Inference-Header-Content-Length`` bytes long) followed by each input with
  ``parameters.binary_data_size`` in input order, raw little-endian (``BYTES`` elements
  with a 4-byte length prefix each), exactly as in ``raw_input_contents``.
* ``outputs[i].parameters.binary_data`` (or ``parameters.binary_data_output`` for all of
  them) asks for an output in the binary part of the response; other output parameters
  (Triton's ``classification``) go through to the servicer.

Every malformed field raises ``codec.TensorError`` naming its path (``inputs[0].data``),
as the gRPC binding's codec does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from protos import codec, oip_pb2, parameters

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"  # an input's or output's parameter: bytes in the binary part
BINARY_OUTPUT = "binary_data"  # a requested output's parameter
BINARY_ALL_OUTPUTS = "binary_data_output"  # a request parameter: every output binary
_HTTP_ONLY = {BINARY_SIZE, BINARY_OUTPUT, BINARY_ALL_OUTPUTS}
_SCALAR = bool | int | float | str


# -- requests ----------------------------------------------------------------------------
def split_body(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    """The parsed JSON header and the binary part of a request body.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (None: the whole
    body is JSON). TensorError (field ``body``) for bad JSON or a bad length.
    """
    if header_length is None:
        size = len(body)
    else:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(body):
            raise codec.TensorError(
                HEADER_LENGTH, f"must be a byte count from 0 to the body's {len(body)} bytes, "
                               f"got {header_length!r}")
    try:
        header = json.loads(body[:size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise codec.TensorError("body", f"not valid JSON: {exc}") from None
    return header, body[size:]


def infer_request(header: Any, binary: bytes, model: str,
                  version: str = "") -> tuple[oip_pb2.ModelInferRequest, set[str]]:
    """The ``ModelInferRequest`` a REST inference request stands for, and the names of
    the outputs the caller wants in the binary part (``"*"``: all of them)."""
    if not isinstance(header, dict):
        raise codec.TensorError("body", f"must be a JSON object, got {_kind(header)}")
    request = oip_pb2.ModelInferRequest(model_name=model, model_version=version)
    if "id" in header:
        if not isinstance(header["id"], str):
            raise codec.TensorError("id", f"must be a string, got {_kind(header['id'])}")
        request.id = header["id"]
    binary_outputs: set[str] = set()
    params = _object(header.get("parameters", {}), "parameters")
    if _flag(params, BINARY_ALL_OUTPUTS, "parameters"):
        binary_outputs.add("*")
    _copy_parameters(params, request.parameters, "parameters")
    inputs = _array(header.get("inputs"), "inputs")
    if not inputs:
        raise codec.TensorError("inputs", "missing or empty; send at least one input")
    offset = 0
    for i, item in enumerate(inputs):
        offset = _add_input(request, _object(item, f"inputs[{i}]"), f"inputs[{i}]",
                            binary, offset)
    if offset != len(binary):
        raise codec.TensorError(
            "body", f"{len(binary) - offset} bytes of binary data follow the JSON header "
                    f"beyond the inputs' {BINARY_SIZE} ({offset} bytes)")
    for i, item in enumerate(_array(header.get("outputs", []), "outputs")):
        field = f"outputs[{i}]"
        item = _object(item, field)
        name = item.get("name")
        if not isinstance(name, str):
            raise codec.TensorError(f"{field}.name", f"must be a string, got {_kind(name)}")
        output = request.outputs.add(name=name)
        out_params = _object(item.get("parameters", {}), f"{field}.parameters")
        if _flag(out_params, BINARY_OUTPUT, f"{field}.parameters"):
            binary_outputs.add(name)
        _copy_parameters(out_params, output.parameters, f"{field}.parameters")
    return request, binary_outputs


def timeout_of(request: oip_pb2.ModelInferRequest) -> float | None:
    """The seconds a REST caller gives its request: Triton's ``timeout`` request parameter
    (microseconds; tritonclient.http's ``infer(timeout=...)``), None when unset.
    HTTP has no deadline of its own, so this is the deadline the servicer sees."""
    micros = parameters.get_param(request.parameters, "timeout")
    if micros is None:
        return None
    if isinstance(micros, bool) or not isinstance(micros, int) or micros < 0:
        raise codec.TensorError("parameters.timeout",
                                f"microseconds as an integer >= 0, got {micros!r}")
    return micros / 1e6


def _add_input(request: oip_pb2.ModelInferRequest, item: dict, field: str, binary: bytes,
               offset: int) -> int:
    """Append one input (as raw contents); returns the new offset into ``binary``."""
    name = item.get("name")
    if not isinstance(name, str):
        raise codec.TensorError(f"{field}.name", f"must be a string, got {_kind(name)}")
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise codec.TensorError(f"{field}.datatype", f"must be a string, got {_kind(datatype)}")
    spec = codec.lookup(datatype, f"{field}.datatype")
    shape = item.get("shape")
    if (not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise codec.TensorError(f"{field}.shape", f"must be a list of integers, got "
                                                  f"{json.dumps(shape)[:80]}")
    params = _object(item.get("parameters", {}), f"{field}.parameters")
    size = params.get(BINARY_SIZE)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    _copy_parameters(params, tensor.parameters, f"{field}.parameters")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise codec.TensorError(f"{field}.parameters.{BINARY_SIZE}",
                                    f"must be an integer >= 0, got {size!r}")
        if "data" in item:
            raise codec.TensorError(f"{field}.data",
                                    f"give either data or parameters.{BINARY_SIZE}, not both")
        if offset + size > len(binary):
            raise codec.TensorError(
                f"{field}.parameters.{BINARY_SIZE}",
                f"{size} bytes from byte {offset} of the binary data, which has "
                f"{len(binary)}")
        request.raw_input_contents.append(binary[offset:offset + size])
        return offset + size
    if "data" not in item:
        raise codec.TensorError(f"{field}.data",
                                f"missing; send the elements or parameters.{BINARY_SIZE}")
    array = _elements(item["data"], spec, f"{field}.data")
    count = math.prod(max(d, 0) for d in shape)
    if array.size != count:
        raise codec.TensorError(f"{field}.data", f"{array.size} elements for {datatype} shape "
                                                 f"{shape}, which holds {count}")
    request.raw_input_contents.append(codec.encode_array(array, f"{field}.data")[2])
    return offset


def _elements(data: Any, spec: codec.Datatype, field: str) -> np.ndarray:
    """``data`` (flat or nested JSON) as a flat array of ``spec``'s dtype."""
    if not isinstance(data, list):
        raise codec.TensorError(field, f"must be a list, got {_kind(data)}")
    if spec.name == "BYTES":
        flat = _flatten(data)
        for j, value in enumerate(flat):
            if not isinstance(value, str):
                raise codec.TensorError(f"{field}[{j}]", f"BYTES elements are strings, got "
                                                         f"{_kind(value)}")
        out = np.empty(len(flat), dtype=object)
        out[:] = [v.encode("utf-8") for v in flat]
        return out
    try:
        values = np.array(data)
    except (ValueError, OverflowError):  # ragged nesting, or an integer beyond 64 bits
        raise codec.TensorError(field, "nested lists must be regular (every row the same "
                                       "length) and hold 64-bit numbers") from None
    values = values.reshape(-1)
    kind = values.dtype.kind
    if values.size and spec.name == "BOOL" and kind != "b":
        raise codec.TensorError(field, "BOOL elements are true or false")
    if values.size and spec.name != "BOOL" and kind not in "iuf":
        raise codec.TensorError(field, f"{spec.name} elements are numbers")
    if spec.dtype.kind in "iu" and values.size:
        if kind == "f":
            raise codec.TensorError(field, f"{spec.name} elements are integers")
        info = np.iinfo(spec.dtype)
        if int(values.min()) < info.min or int(values.max()) > info.max:
            raise codec.TensorError(field, f"value out of range for {spec.name} "
                                           f"[{info.min}, {info.max}]")
    return values.astype(spec.dtype)


def _flatten(data: list) -> list:
    flat: list = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _copy_parameters(source: Mapping[str, Any], target, field: str) -> None:
    for key, value in source.items():
        if key in _HTTP_ONLY:
            continue
        if not isinstance(value, _SCALAR):
            raise codec.TensorError(f"{field}.{key}", f"must be a bool, number or string, "
                                                      f"got {_kind(value)}")
        try:
            parameters.set_param(target, key, value)
        except ValueError as exc:
            raise codec.TensorError(f"{field}.{key}", str(exc)) from None


def _flag(params: Mapping[str, Any], key: str, field: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise codec.TensorError(f"{field}.{key}", f"must be true or false, got {_kind(value)}")
    return value


def _object(value: Any, field: str) -> dict:
    if not isinstance(value, dict):
        raise codec.TensorError(field, f"must be a JSON object, got {_kind(value)}")
    return value


def _array(value: Any, field: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise codec.TensorError(field, f"must be a list, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a bool",
            type(None): "null"}.get(type(value), "a number")


# -- responses ---------------------------------------------------------------------------
def infer_response(response: oip_pb2.ModelInferResponse,
                   binary_outputs: set[str]) -> tuple[bytes, int | None]:
    """The REST body of ``response`` and its JSON header's length (None: no binary part,
    the body is all JSON). Outputs named in ``binary_outputs`` (``"*"``: all) travel
    raw after the header, each with ``parameters.binary_data_size``."""
    arrays = codec.decode_outputs(response)
    raws = response.raw_output_contents
    header: dict[str, Any] = {"model_name": response.model_name,
                              "model_version": response.model_version}
    if response.id:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = params_dict(response.parameters)
    outputs, binary = [], []
    for i, tensor in enumerate(response.outputs):
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                               "shape": list(tensor.shape)}
        if tensor.parameters:
            out["parameters"] = params_dict(tensor.parameters)
        if "*" in binary_outputs or tensor.name in binary_outputs:
            raw = raws[i] if raws else codec.encode_array(arrays[tensor.name])[2]
            out.setdefault("parameters", {})[BINARY_SIZE] = len(raw)
            binary.append(raw)
        else:
            out["data"] = _json_data(arrays[tensor.name])
        outputs.append(out)
    header["outputs"] = outputs
    text = json.dumps(header, separators=(",", ":")).encode()
    if not binary:
        return text, None
    return b"".join([text, *binary]), len(text)


def _json_data(array: np.ndarray) -> list:
    flat = array.reshape(-1)
    if flat.dtype == object:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    return flat.tolist()


def params_dict(params) -> dict[str, Any]:
    """An ``InferParameter`` map as plain JSON values."""
    return {key: parameters.get_param(params, key) for key in sorted(params)}


def message_dict(message) -> dict[str, Any]:
    """A metadata, config or statistics message as JSON the way Triton's REST API writes
    it: proto field names, every field (zeros too), and 64-bit integers as numbers
    (protobuf's JSON mapping writes them as strings)."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    _numbers(message.DESCRIPTOR, data)
    return data


_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def _numbers(descriptor, data: dict) -> None:
    for key, value in data.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                items = list(value.values())
                sub = value_field.message_type
                if sub is not None:
                    for v in items:
                        _numbers(sub, v)
                elif value_field.type in _INT64:
                    for k in value:
                        value[k] = int(value[k])
            else:
                for v in value if isinstance(value, list) else [value]:
                    _numbers(field.message_type, v)
        elif field.type in _INT64:
            data[key] = [int(v) for v in value] if isinstance(value, list) else int(value)


def metadata_dict(response: oip_pb2.ModelMetadataResponse) -> dict[str, Any]:
    """ModelMetadata as the REST binding's JSON (every key present, as KServe lists)."""
    def tensor(t) -> dict[str, Any]:
        return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}

    return {"name": response.name, "versions": list(response.versions),
            "platform": response.platform, "inputs": [tensor(t) for t in response.inputs],
            "outputs": [tensor(t) for t in response.outputs]}
