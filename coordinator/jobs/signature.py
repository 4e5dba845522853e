"""Check a job against the model it names, and plan how its shards run.

Pure: the model's facts (task, inputs, outputs, batching, as a live node reports them) and
the job's items (dtype, item shape) and requested outputs in; a ``JobPlan`` or an error
naming the field out. Rules:

- A job's items are one tensor each: the model must have exactly one input
  (``InvalidJobError`` otherwise: jobs of multi-input models are not supported).
- For a model that is not a classifier the items must have the input's shape without
  its batch dimension (-1: any size) and its dtype, or FP32 for an integer input (the
  node quantizes with the tensor's own scale and zero point, or refuses; the first item
  is run on a node at Submit either way). A classifier's items keep today's rule: the
  node's image preprocessing decides (uint8 images, float32 tensors).
- A model that cannot batch (``max_batch_size`` 0; its input's batch dimension is 1)
  gets one item per request.
- Requested outputs must be outputs of the model, named once each, and numeric.
- A cascade rule needs a classifier (``CascadeUnsupportedError``, FAILED_PRECONDITION)
  and keeps label and confidence only (no outputs).

When no live node can say (facts None), nothing is checked: the shards meet the nodes'
own rules, and the task is asked again when a shard runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coordinator.errors import CascadeUnsupportedError, InvalidJobError, JobInputError
from coordinator.fleet.catalog import CLASSIFICATION, ModelFacts, TensorSpec

# NumPy dtype name -> the OIP datatype a node's metadata lists for it.
OIP_DATATYPES = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
                 "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32",
                 "int64": "INT64", "float16": "FP16", "float32": "FP32", "float64": "FP64"}
ITEMSIZE = {oip: np.dtype(name).itemsize for name, oip in OIP_DATATYPES.items()}
QUANTIZABLE = ("INT8", "UINT8", "INT16")  # inputs a node may quantize FP32 items for


@dataclass(frozen=True)
class JobPlan:
    """How a job's shards run: the model's ``task`` (None while no node could say), the
    ``outputs`` each result keeps (empty: the task's default), whether requests may hold
    several items (``batched``), and the bytes of one item's answer as far as the model's
    metadata bounds it (0: unknown)."""

    task: str | None
    outputs: tuple[str, ...]
    batched: bool = True
    answer_bytes: int = 0


def plan_job(model: str, facts: ModelFacts | None, dtype: np.dtype,
             item_shape: Sequence[int], outputs: Sequence[str],
             cascaded: bool = False) -> JobPlan:
    """The plan of a job of ``model`` whose items are ``dtype`` ``item_shape``, keeping
    ``outputs``; raises ``InvalidJobError`` / ``JobInputError`` naming the field, and
    ``CascadeUnsupportedError`` for a cascaded model that is not a classifier."""
    outputs = tuple(outputs)
    for name in outputs:
        if not name:
            raise InvalidJobError("outputs: an output name is empty")
    twice = sorted({n for n in outputs if outputs.count(n) > 1})
    if twice:
        raise InvalidJobError(f"outputs: {twice} named more than once")
    if facts is None:
        return JobPlan(None, outputs)
    task = facts.task
    if cascaded and task != CLASSIFICATION:
        raise CascadeUnsupportedError(
            f"model {model!r} has a cascade rule (--cascade/--escalation) but its nodes serve "
            f"it as task {task!r}; the cascade needs a classification model's "
            "probabilities: remove the rule for it, or serve it with task = \"classification\"")
    if cascaded and outputs:
        raise InvalidJobError(f"outputs: {model} is cascaded to the cloud tier, whose answer "
                              "is a label and a confidence; submit without outputs")
    if len(facts.inputs) > 1:
        names = ", ".join(t.name for t in facts.inputs)
        raise InvalidJobError(
            f"model: {model} has {len(facts.inputs)} inputs ({names}); a job's items are one "
            "tensor each, so jobs support single-input models only: send online ModelInfer "
            "requests (to the coordinator) for this model")
    by_name = {t.name: t for t in facts.outputs}
    if facts.outputs:
        unknown = [n for n in outputs if n not in by_name]
        if unknown:
            raise InvalidJobError(f"outputs: {model} has no output {unknown[0]!r}; its "
                                  f"outputs are {', '.join(by_name)}")
        bad = [n for n in outputs if by_name[n].datatype not in ITEMSIZE]
        if bad:
            raise InvalidJobError(f"outputs: {bad[0]!r} is {by_name[bad[0]].datatype}; a "
                                  "job keeps numeric outputs only")
    if facts.inputs and task != CLASSIFICATION:
        _check_items(model, facts.inputs[0], facts.batched, dtype, tuple(item_shape))
    kept = [by_name[n] for n in outputs] if outputs else list(facts.outputs)
    return JobPlan(task, outputs, facts.batched, _answer_bytes(kept, facts.batched))


def _check_items(model: str, spec: TensorSpec, batched: bool, dtype: np.dtype,
                 item_shape: tuple[int, ...]) -> None:
    shape = spec.shape
    if not batched and (not shape or shape[0] != 1):
        raise InvalidJobError(
            f"model: {model}'s input {spec.name!r} has shape {list(shape)}, no batch "
            "dimension of 1; a job needs one: send online ModelInfer requests instead")
    expected = shape[1:]
    if len(expected) != len(item_shape) or any(
            want not in (-1, got) for want, got in zip(expected, item_shape, strict=True)):
        raise JobInputError(
            f"items: item shape {list(item_shape)} does not fit {model}'s input "
            f"{spec.name!r} {list(shape)}: each item must be {list(expected)} (-1: any "
            f"size), stacked into [N, {', '.join(map(str, expected))}]", field="items")
    got = OIP_DATATYPES.get(np.dtype(dtype).name, str(dtype))
    if got != spec.datatype and not (got == "FP32" and spec.datatype in QUANTIZABLE):
        wanted = np.dtype(next(n for n, o in OIP_DATATYPES.items() if o == spec.datatype)) \
            if spec.datatype in ITEMSIZE else spec.datatype
        also = " (or float32, which the node quantizes)" if spec.datatype in QUANTIZABLE else ""
        raise JobInputError(
            f"items: dtype {np.dtype(dtype)} ({got}) does not fit {model}'s input "
            f"{spec.name!r} ({spec.datatype}); send {wanted}{also} items "
            "(array.astype(...))", field="items")


def _answer_bytes(outputs: Sequence[TensorSpec], batched: bool) -> int:
    """One item's bytes of ``outputs`` (0 when a dimension is not fixed)."""
    total = 0
    for t in outputs:
        dims = t.shape[1:] if batched or (t.shape and t.shape[0] == 1) else t.shape
        if any(d < 0 for d in dims) or t.datatype not in ITEMSIZE:
            return 0
        total += math.prod(dims) * ITEMSIZE[t.datatype]
    return total
