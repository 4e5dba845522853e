"""The batcher on its own: batching, bounds, deadlines, cancellation, drain."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_node.batcher import Batcher
from edge_node.errors import DeadlineExceededError, OverloadedError, ShuttingDownError


class Recorder:
    """Interpreter stand-in for testing the batcher alone: doubles its input, can be paused."""

    def __init__(self):
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def execute(self, key, interpreter, tensors):
        (batch,) = tensors
        self.gate.wait(10)
        self.batches.append(batch.shape[0])
        if key == "boom":
            raise RuntimeError("kernel failure")
        return (batch * 2,), 0.0, 0.0


def submit(batcher, key, array, deadline):
    """Queue one single-tensor request of ``array.shape[0]`` rows."""
    return batcher.submit(key, (array,), array.shape[0], deadline)


def make(rec, **kw):
    b = Batcher(lambda: {"a": None, "b": None, "boom": None}, rec.execute,
                max_batch_size=lambda key: 8, **kw)
    b.start()
    return b


def test_rows_come_back_to_their_requests_in_one_batch():
    rec = Recorder()
    rec.gate.clear()
    b = make(rec, workers=1)
    blocker = submit(b, "b", np.ones((1, 1)), None)  # occupies the worker
    time.sleep(0.05)
    reqs = [submit(b, "a", np.full((2, 1), i), None) for i in range(3)]
    rec.gate.set()
    for i, r in enumerate(reqs):
        (out,) = r.future.result(5)
        np.testing.assert_array_equal(out, np.full((2, 1), 2 * i))
    blocker.future.result(5)
    assert rec.batches == [1, 6]  # the three waiting requests ran as one batch
    assert reqs[0].timings.batch_size == 6
    b.stop(1)


def test_batches_respect_max_batch_size_and_model():
    rec = Recorder()
    rec.gate.clear()
    b = make(rec, workers=1)
    submit(b, "b", np.ones((1, 1)), None)
    time.sleep(0.05)
    reqs = [submit(b, "a", np.ones((3, 1)), None) for _ in range(4)]
    reqs.append(submit(b, "b", np.ones((1, 1)), None))
    rec.gate.set()
    for r in reqs:
        r.future.result(5)
    assert rec.batches == [1, 6, 6, 1]  # 3+3 fit in 8, a third would not; b apart
    b.stop(1)


def test_full_queue_is_refused_and_accepted_work_finishes():
    rec = Recorder()
    rec.gate.clear()
    b = make(rec, workers=1, max_queue_size=2)
    running = submit(b, "a", np.ones((8, 1)), None)
    time.sleep(0.05)
    queued = [submit(b, "b", np.ones((1, 1)), None) for _ in range(2)]
    with pytest.raises(OverloadedError, match="queue full"):
        submit(b, "b", np.ones((1, 1)), None)
    rec.gate.set()
    for r in [running, *queued]:
        r.future.result(5)


def test_expired_and_cancelled_requests_do_not_run():
    rec = Recorder()
    rec.gate.clear()
    b = make(rec, workers=1)
    submit(b, "b", np.ones((1, 1)), None)
    time.sleep(0.05)
    expired = submit(b, "a", np.ones((1, 1)), time.monotonic() + 0.01)
    cancelled = submit(b, "a", np.ones((2, 1)), None)
    assert cancelled.future.cancel()
    time.sleep(0.05)
    rec.gate.set()
    with pytest.raises(DeadlineExceededError):
        expired.future.result(5)
    b.stop(1)
    assert rec.batches == [1]


def test_batch_failure_fails_its_requests_and_worker_survives():
    rec = Recorder()
    b = make(rec, workers=1)
    with pytest.raises(RuntimeError, match="kernel failure"):
        submit(b, "boom", np.ones((1, 1)), None).future.result(5)
    (out,) = submit(b, "a", np.ones((1, 1)), None).future.result(5)
    assert out[0, 0] == 2
    b.stop(1)


def test_stop_drains_queue_then_refuses():
    rec = Recorder()
    rec.gate.clear()
    b = make(rec, workers=1)
    reqs = [submit(b, k, np.ones((1, 1)), None) for k in ("a", "b", "a")]
    threading.Timer(0.1, rec.gate.set).start()
    assert b.stop(5)
    assert all(r.future.result(0) for r in reqs)
    with pytest.raises(ShuttingDownError):
        submit(b, "a", np.ones((1, 1)), None)


def test_interpreter_build_failure_surfaces_at_start():
    def broken():
        raise RuntimeError("cannot build interpreter")

    b = Batcher(broken, Recorder().execute, max_batch_size=lambda key: 8, workers=2)
    with pytest.raises(RuntimeError, match="cannot build"):
        b.start()


class ThreadRecorder(Recorder):
    def __init__(self):
        super().__init__()
        self.threads: list[str] = []

    def execute(self, key, interpreter, batch):
        self.threads.append(threading.current_thread().name)
        return super().execute(key, interpreter, batch)


def test_inline_runs_on_the_caller_when_idle_and_queues_when_busy():
    rec = ThreadRecorder()
    b = Batcher(lambda: {"a": None}, rec.execute, max_batch_size=lambda key: 8, workers=1,
                inline=True)
    b.start()
    req = submit(b, "a", np.ones((1, 1)), None)
    assert req.future.done()  # answered before submit returned
    assert rec.threads == [threading.current_thread().name]

    rec.gate.clear()  # the next inline call blocks while holding the only interpreter set
    held = threading.Thread(target=lambda: submit(b, "a", np.ones((1, 1)), None))
    held.start()
    time.sleep(0.05)
    queued = submit(b, "a", np.full((2, 1), 3.0), None)  # no free set: it queues
    assert not queued.future.done() and b.depth == 1
    rec.gate.set()
    held.join(5)
    (out,) = queued.future.result(5)
    np.testing.assert_array_equal(out, np.full((2, 1), 6.0))
    assert rec.threads[-1].startswith("edge-worker")  # the queued one ran on a worker
    assert b.stop(1)


def test_inline_is_off_with_a_batching_delay():
    rec = ThreadRecorder()
    b = Batcher(lambda: {"a": None}, rec.execute, max_batch_size=lambda key: 8, workers=1,
                max_delay=lambda key: 0.001, inline=True)
    b.start()
    submit(b, "a", np.ones((1, 1)), None).future.result(5)
    assert rec.threads[0].startswith("edge-worker")
    b.stop(1)
