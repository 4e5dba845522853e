"""Bounded request queue and worker threads with dynamic batching.

There are ``workers`` interpreter sets (one interpreter per model version each;
interpreters are not thread-safe, so a set is used by one thread at a time). A worker
thread takes the oldest queued request and a free set, adds later requests for the same
model version while the batch stays within ``max_batch_size`` (waiting up to
``max_delay`` for more when the queue runs dry), runs them as one batch and splits the
result rows back to each request.

Inline fast path (``inline=True``, for keys whose ``max_delay`` is 0): when nothing is queued
and a set is free, the submitting thread runs its request itself with that set. An idle
node then answers without two thread hand-offs (queue -> worker -> future), which cost
more than the inference of a small model; under load requests queue and batch as above.

Failure behaviour: a full queue refuses new requests at once (``OverloadedError``)
instead of queueing without bound; a request whose deadline passed while queued is
failed with ``DeadlineExceededError`` without running; a request whose caller gave up
(future cancelled) is skipped; an exception while running a batch fails every request
in that batch and the worker carries on. ``stop()`` refuses new work and lets queued
and running requests finish within the grace period.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_node.errors import DeadlineExceededError, OverloadedError, ShuttingDownError

log = logging.getLogger(__name__)

@dataclass
class Timings:
    """Seconds spent by one request in each phase (preprocess is filled in by the caller)."""

    queue: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    batch_size: int = 0


@dataclass
class Request:
    """One queued inference request: ``tensors`` (one per model input, each ``[rows, ...]``)
    for the model version ``key``.

    ``future`` resolves to a tuple of result arrays holding this request's rows (or to the
    error); ``deadline`` and ``enqueued`` are ``time.monotonic()`` seconds.
    """

    key: Any  # the model version's key; requests with equal keys may share a batch
    tensors: tuple[np.ndarray, ...]
    rows: int  # items in the request (the tensors' first dimension when batched)
    deadline: float | None  # time.monotonic() deadline, None for none
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    timings: Timings = field(default_factory=Timings)


class Batcher:
    """Dynamic batcher over ``workers`` threads.

    ``make_interpreters()`` is called once in each worker thread and returns
    ``{key: interpreter}``; ``execute(key, interpreter, tensors)`` returns a tuple of
    row-aligned result arrays plus the inference and postprocess seconds:
    ``(arrays, inference_s, postprocess_s)``. ``max_batch_size(key)`` is the most rows
    one invocation takes (1: requests of that key never share a batch) and
    ``max_delay(key)`` the seconds to wait for more requests when the queue runs dry.
    """

    def __init__(
        self,
        make_interpreters: Callable[[], dict],
        execute: Callable[[Any, Any, tuple[np.ndarray, ...]],
                          tuple[Sequence[np.ndarray], float, float]],
        max_batch_size: Callable[[Any], int],
        workers: int = 1,
        max_queue_size: int = 256,
        max_delay: Callable[[Any], float] = lambda key: 0.0,
        on_batch: Callable[[Any, int, list[Request]], None] | None = None,
        inline: bool = False,
    ):
        self._make = make_interpreters
        self._execute = execute
        self._max_batch = max_batch_size
        self._workers_n = workers
        self._max_queue = max_queue_size
        self._max_delay = max_delay
        self._on_batch = on_batch
        self._inline = inline
        self._idle: list[dict] = []  # free interpreter sets
        self._sets: list[dict] = []  # every interpreter set, free or in use
        self._queue: deque[Request] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._ready = threading.Barrier(workers + 1)
        self._startup_errors: list[BaseException] = []

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        """Start workers; returns once each built (and warmed) its interpreters."""
        for i in range(self._workers_n):
            t = threading.Thread(target=self._run, name=f"edge-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._ready.wait(timeout)
        if self._startup_errors:
            self.stop(0)
            raise self._startup_errors[0]

    def stop(self, grace: float) -> bool:
        """Refuse new work; wait up to ``grace`` s for queued and running work. True if drained."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + grace
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        drained = not any(t.is_alive() for t in self._threads)
        if not drained:
            with self._cond:
                left = list(self._queue)
                self._queue.clear()
            for req in left:
                _fail(req, ShuttingDownError("node shut down before the request ran"))
        return drained

    @property
    def set_count(self) -> int:
        """How many interpreter sets there are (one per worker)."""
        return len(self._sets)

    def add_interpreters(self, key: Any, interpreters: Sequence[Any]) -> None:
        """Give every interpreter set one of ``interpreters`` for the new key ``key``
        (``len(interpreters) == set_count``). Sets in use are extended too: a worker only
        looks up the key of the batch it runs, and a dict insert is atomic."""
        with self._cond:
            if len(interpreters) != len(self._sets):
                raise ValueError(f"need {len(self._sets)} interpreters, got "
                                 f"{len(interpreters)}")
            for target, interpreter in zip(self._sets, interpreters, strict=True):
                target[key] = interpreter

    def remove_interpreters(self, key: Any) -> None:
        """Drop the interpreters of ``key`` (no request for it may be queued or running)."""
        with self._cond:
            for target in self._sets:
                target.pop(key, None)

    @property
    def depth(self) -> int:
        """Number of requests waiting in the queue."""
        return len(self._queue)

    # -- producer side ---------------------------------------------------------------------
    def submit(self, key: Any, tensors: tuple[np.ndarray, ...], rows: int,
               deadline: float | None) -> Request:
        """Queue ``tensors`` (``rows`` items) for the model version ``key``; returns the
        request (await its future).

        With the inline fast path the request may have run in the calling thread already.
        ``deadline`` is ``time.monotonic()`` seconds (None: no deadline). Raises
        ``ShuttingDownError`` while stopping and ``OverloadedError`` when the queue is full.
        """
        req = Request(key, tensors, rows, deadline)
        with self._cond:
            if self._stopping:
                raise ShuttingDownError("node is draining; send the request to another node")
            if len(self._queue) >= self._max_queue:
                raise OverloadedError(
                    f"queue full ({self._max_queue} requests waiting); retry later or elsewhere"
                )
            interpreters = None
            if (self._inline and not self._queue and self._idle
                    and self._max_delay(key) == 0):
                interpreters = self._idle.pop()
            else:
                self._queue.append(req)
                self._cond.notify()
        if interpreters is not None:
            try:
                if self._usable(req):  # a fresh request: neither cancelled nor late
                    self._run_batch(interpreters, [req])
            finally:
                self._give_back(interpreters)
        return req

    def _give_back(self, interpreters: dict) -> None:
        with self._cond:
            self._idle.append(interpreters)
            # A worker waits for a queued request and a free set together: with nothing
            # queued there is no one to wake (waking one anyway cost an idle node ~0.1 ms
            # of GIL hand-offs per request on the inline path).
            if self._queue or self._stopping:
                self._cond.notify()

    # -- worker side -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            interpreters = self._make()
        except BaseException as exc:  # reported by start()
            self._startup_errors.append(exc)
            self._ready.wait()
            return
        with self._cond:
            self._sets.append(interpreters)
        self._give_back(interpreters)
        self._ready.wait()
        while True:
            taken = self._take()
            if taken is None:
                return
            batch, interpreters = taken
            try:
                self._run_batch(interpreters, batch)
            finally:
                self._give_back(interpreters)

    def _take(self) -> tuple[list[Request], dict] | None:
        with self._cond:
            while True:
                while not (self._queue and self._idle):
                    if self._stopping and not self._queue:
                        return None
                    self._cond.wait()
                head = self._queue.popleft()
                if self._usable(head):
                    break
            interpreters = self._idle.pop()
            batch = [head]
            limit = self._max_batch(head.key)
            rows = head.rows
            deadline = time.monotonic() + self._max_delay(head.key)
            while True:
                rows = self._gather(head.key, batch, rows, limit)
                remaining = deadline - time.monotonic()
                if rows >= limit or remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            return batch, interpreters

    def _gather(self, key: Any, batch: list[Request], rows: int, limit: int) -> int:
        """Move queued requests for ``key`` that still fit into ``batch`` (keeps order)."""
        kept: deque[Request] = deque()
        while self._queue:
            req = self._queue.popleft()
            if req.key == key and rows + req.rows <= limit:
                if self._usable(req):
                    batch.append(req)
                    rows += req.rows
            else:
                kept.append(req)
        self._queue = kept
        return rows

    @staticmethod
    def _usable(req: Request) -> bool:
        """False (and the request answered) if it was cancelled or its deadline passed."""
        if not req.future.set_running_or_notify_cancel():
            return False
        if req.deadline is not None and time.monotonic() > req.deadline:
            req.future.set_exception(DeadlineExceededError("deadline passed while queued"))
            return False
        return True

    def _run_batch(self, interpreters: dict, batch: list[Request]) -> None:
        start = time.monotonic()
        key = batch[0].key
        try:
            tensors = (
                batch[0].tensors
                if len(batch) == 1
                else tuple(np.concatenate(parts, axis=0)
                           for parts in zip(*(r.tensors for r in batch), strict=True))
            )
            arrays, infer_s, post_s = self._execute(key, interpreters[key], tensors)
            rows = sum(r.rows for r in batch)
            offset = 0
            for req in batch:
                t = req.timings
                t.queue = start - req.enqueued
                t.inference, t.postprocess = infer_s, post_s
                t.batch_size = rows
                part = (tuple(arrays) if len(batch) == 1 else
                        tuple(a[offset : offset + req.rows] for a in arrays))
                offset += req.rows
                req.future.set_result(part)
        except Exception as exc:  # noqa: BLE001 - every request in the batch gets the error
            log.exception("batch of %d for %s failed", len(batch), key)
            for req in batch:
                _fail(req, exc)
        finally:
            if self._on_batch is not None:
                self._on_batch(key, sum(r.rows for r in batch), batch)


def _fail(req: Request, exc: BaseException) -> None:
    if not req.future.done():
        with contextlib.suppress(InvalidStateError):  # resolved by a racing path
            req.future.set_exception(exc)
