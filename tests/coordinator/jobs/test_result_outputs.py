"""Results that hold output tensors (models that are not classifiers): stored in result
blocks on both backends, bit-exact, exactly one per item; blocks written before outputs
existed still read; and the pure checks that plan such a job."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest

from coordinator.errors import CascadeUnsupportedError, InvalidJobError, JobInputError
from coordinator.fleet.catalog import ModelFacts, TensorSpec
from coordinator.jobs.items import ItemSource
from coordinator.jobs.model import ResultBatch
from coordinator.jobs.results import decode_block
from coordinator.jobs.service import JobService
from coordinator.jobs.signature import plan_job
from coordinator.jobs.store import JobStore


@pytest.fixture
def store(store_location):
    s = JobStore(store_location)
    yield s
    s.close()


def tensor_answer(lease, seed: int = 0) -> ResultBatch:
    rng = np.random.default_rng(seed)
    n = len(lease.ids)
    return ResultBatch(list(lease.ids), None, None, "n1", "1", outputs={
        "mask": rng.random((n, 3, 2), dtype=np.float32),
        "count": rng.integers(-5, 5, n, dtype=np.int64),
        "flag": rng.random(n) > 0.5})


def test_outputs_are_stored_bit_exact_and_once_per_item(store):
    items = np.random.default_rng(1).random((5, 4), dtype=np.float32)
    info = store.create_job("seg", (None, items), 3, {"task": "tensor"})
    sent = {}
    while (lease := store.lease_next("n1", 30.0, time.time())) is not None:
        batch = tensor_answer(lease, lease.shard_id)
        for k, item in enumerate(batch.item_ids):
            sent[item] = {name: a[k] for name, a in batch.outputs.items()}
        assert store.complete(lease.shard_id, lease.attempt, batch).accepted == len(batch)
        # a late duplicate with other values changes nothing (first writer wins)
        again = store.complete(lease.shard_id, lease.attempt, tensor_answer(lease, 99))
        assert again.accepted == 0 and again.duplicates == len(batch)
    assert store.progress(info.job_id).state == "done"
    rows = store.results(info.job_id)
    assert sorted(r.item_id for r in rows) == [str(i) for i in range(5)]
    for r in rows:
        assert r.label is None and r.confidence is None
        assert set(r.outputs) == {"mask", "count", "flag"}
        for name, want in sent[r.item_id].items():
            assert r.outputs[name].dtype == want.dtype
            np.testing.assert_array_equal(r.outputs[name], want)


def test_a_page_of_heavy_results_stops_at_its_bytes(store):
    info = store.create_job("seg", (None, np.zeros((6, 2), np.float32)), 2)
    while (lease := store.lease_next("n1", 30.0, time.time())) is not None:
        store.complete(lease.shard_id, lease.attempt, tensor_answer(lease))
    first = store.results(info.job_id, limit=512, max_bytes=1)  # one block, then stop
    assert len(first) == 2
    rest = store.results(info.job_id, after_seq=first[-1].seq, limit=512)
    assert len(rest) == 4


def test_blocks_written_before_outputs_existed_still_read():
    body = msgpack.packb([["a", "b"], np.array([3, 4], "<i8").tobytes(),
                          np.array([0.5, 0.25], "<f8").tobytes(), "edge", None])
    rows = decode_block(7, "n1", "1", body)
    assert [(r.item_id, r.label, r.confidence, r.seq, r.outputs) for r in rows] == [
        ("a", 3, 0.5, 7, {}), ("b", 4, 0.25, 8, {})]


# -- planning a job against the model's metadata ---------------------------------------------

SEG = ModelFacts(32, task="tensor", inputs=(TensorSpec("x", "FP32", (-1, 8, 8, 3)),),
                 outputs=(TensorSpec("mask", "FP32", (-1, 8, 8, 1)),
                          TensorSpec("name", "BYTES", (-1, 1))))
DETECTOR = ModelFacts(None, task="tensor", batched=False,
                      inputs=(TensorSpec("x", "INT8", (1, 16, 16, 3)),),
                      outputs=(TensorSpec("boxes", "FP32", (1, 896, 16)),))


def test_plan_fits_the_models_input_and_sizes_the_answer():
    plan = plan_job("seg", SEG, np.dtype(np.float32), (8, 8, 3), ["mask"])
    assert (plan.task, plan.outputs, plan.batched, plan.answer_bytes) == (
        "tensor", ("mask",), True, 8 * 8 * 4)
    plan = plan_job("det", DETECTOR, np.dtype(np.float32), (16, 16, 3), [])  # quantized
    assert not plan.batched and plan.answer_bytes == 896 * 16 * 4
    assert plan_job("m", None, np.dtype(np.uint8), (2,), ["a"]).task is None  # no node


@pytest.mark.parametrize("facts,dtype,shape,outputs,error,text", [
    (SEG, np.float32, (8, 8), (), JobInputError, "each item must be [8, 8, 3]"),
    (SEG, np.float64, (8, 8, 3), (), JobInputError, "send float32 items"),
    (DETECTOR, np.int32, (16, 16, 3), (), JobInputError,
     "send int8 (or float32, which the node quantizes) items"),
    (SEG, np.float32, (8, 8, 3), ("nope",), InvalidJobError, "its outputs are mask, name"),
    (SEG, np.float32, (8, 8, 3), ("name",), InvalidJobError, "numeric outputs only"),
    (SEG, np.float32, (8, 8, 3), ("mask", "mask"), InvalidJobError, "more than once"),
    (ModelFacts(8, task="tensor", inputs=(TensorSpec("a", "FP32", (-1, 2)),
                                          TensorSpec("b", "FP32", (-1, 2)))),
     np.float32, (2,), (), InvalidJobError, "single-input models only"),
])
def test_plan_refuses_what_the_model_cannot_take(facts, dtype, shape, outputs, error, text):
    with pytest.raises(error) as err:
        plan_job("m", facts, np.dtype(dtype), shape, outputs)
    assert text in str(err.value)


def test_a_cascade_needs_a_classifier_and_keeps_no_outputs():
    with pytest.raises(CascadeUnsupportedError) as err:
        plan_job("seg", SEG, np.dtype(np.float32), (8, 8, 3), (), cascaded=True)
    assert "model 'seg'" in str(err.value) and "task 'tensor'" in str(err.value)
    with pytest.raises(InvalidJobError):
        plan_job("mnist", ModelFacts(32), np.dtype(np.uint8), (28, 28), ("probabilities",),
                 cascaded=True)


def test_shards_fit_the_answer_as_well_as_the_items():
    service = JobService.__new__(JobService)
    service.max_shard_bytes = 1000
    items = ItemSource.from_arrays(None, np.zeros((4, 10), np.float32))  # 40 bytes each
    assert service._fit_message(64, items) == 25
    assert service._fit_message(64, items, answer_bytes=200) == 5  # segmentation-like
    with pytest.raises(InvalidJobError, match="one item's answer is 2000 bytes"):
        service._fit_message(64, items, answer_bytes=2000)
