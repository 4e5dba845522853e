"""The node's inference core: repository + tasks + batcher + statistics.

Transport-free: takes NumPy arrays, returns NumPy arrays, raises ``edge_node.errors``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_node.batcher import Batcher, Request
from edge_node.config import NodeConfig
from edge_node.drift import DriftWindows
from edge_node.errors import (
    DeadlineExceededError,
    EdgeNodeError,
    InvalidInputError,
    OverloadedError,
    ShuttingDownError,
)
from edge_node.metrics import NodeMetrics
from edge_node.repository import ModelRepository, ModelVersion
from edge_node.stats import StatsBook

log = logging.getLogger(__name__)

LATENCY_ALPHA = 0.2  # EWMA weight of the newest request latency
OUTCOMES = {  # metric label of each way a request can end
    InvalidInputError: "invalid",
    OverloadedError: "overloaded",
    DeadlineExceededError: "deadline_exceeded",
    ShuttingDownError: "unavailable",
}


@dataclass(frozen=True)
class InferResult:
    """One request's answer: the model version that ran, its outputs and the served request.

    ``outputs`` maps each of the task's output names to its rows, in the task's order;
    ``request.timings`` holds the per-phase seconds and the batch size it ran in.
    """

    version: ModelVersion
    outputs: dict[str, np.ndarray]
    request: Request


class InferenceEngine:
    """Validates, queues and runs inference requests for every loaded model version."""

    def __init__(self, config: NodeConfig, repository: ModelRepository,
                 metrics: NodeMetrics | None = None):
        self.config = config
        self.repository = repository
        self.metrics = metrics or NodeMetrics()
        self.stats = StatsBook()
        self.drift = DriftWindows(config.drift_sample_every, config.drift_window_items,
                                  config.drift_max_segments)
        self._drift_failed = False
        self.versions = {v.key: v for v in repository.ready_versions()}
        default_delay = config.max_batch_delay_ms / 1000.0
        self._delays = {
            key: default_delay if v.spec.max_queue_delay_ms is None
            else v.spec.max_queue_delay_ms / 1000.0
            for key, v in self.versions.items()}
        self._in_flight = 0
        self._in_flight_by_key: dict[tuple[str, str], int] = {}
        self.latency_ewma_ms = 0.0  # smoothed latency of successful requests
        self._lock = threading.Lock()
        self.batcher = Batcher(
            make_interpreters=self._make_interpreters,
            execute=self._execute,
            max_batch_size=lambda key: self.versions[key].max_batch_size,
            workers=config.workers,
            max_queue_size=config.max_queue_size,
            max_delay=self._delays.__getitem__,
            on_batch=self._on_batch,
            inline=True,
        )
        for key in self.versions:
            self.stats.register(key)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers; each builds and warms up its interpreters before returning."""
        t0 = time.monotonic()
        for mv in self.versions.values():
            self._check_max_batch(mv)
        self.batcher.start()
        for key, mv in self.versions.items():
            self.metrics.ready.labels(*key).set(1)
            self.metrics.runs_on.labels(*key, mv.runs_on,
                                        "1" if mv.delegate_fallback else "0").set(1)
        log.info("%d model version(s) warm on %d worker(s) in %.2fs",
                 len(self.versions), self.config.workers, time.monotonic() - t0)

    def stop(self, grace: float) -> bool:
        """Mark every version not ready, drain the batcher within ``grace`` s; True if drained."""
        for key in self.versions:
            self.metrics.ready.labels(*key).set(0)
        return self.batcher.stop(grace)

    @property
    def in_flight(self) -> int:
        """Requests now inside :meth:`infer` (being validated, queued or running)."""
        return self._in_flight

    def _make_interpreters(self) -> dict:
        """Per worker thread: one interpreter per version, warmed at batch 1."""
        return {key: self._warm_interpreter(mv) for key, mv in self.versions.items()}

    def _warm_interpreter(self, mv: ModelVersion, rows: int = 1):
        """A new interpreter for ``mv``, run once on ``rows`` rows of zeros."""
        interp = mv.new_interpreter(self.config.interpreter_threads)
        interp.run(tuple(
            np.zeros((rows, *s.shape[1:]) if mv.signature.batched else s.shape, s.dtype)
            for s in mv.signature.inputs))
        return interp

    def _check_max_batch(self, mv: ModelVersion) -> None:
        """Run ``mv`` once at its largest batch on an interpreter of its own, then free it.

        A model that cannot run a full batch is refused at load, not under load; the
        serving interpreters stay warmed at batch 1, because a TFLite interpreter keeps
        the tensor arena of the largest batch it ran (12 MiB each for mnist_cloud at 64)
        and an idle node should not hold that per worker.
        """
        if mv.signature.batched and mv.max_batch_size > 1:
            self._warm_interpreter(mv, mv.max_batch_size)

    # -- hot swap --------------------------------------------------------------------------
    def add_version(self, mv: ModelVersion) -> None:
        """Warm one interpreter per worker for ``mv``, then make it servable.

        Raises what loading or running the model raises (the version then never serves).
        The caller publishes it in the repository afterwards, which switches new requests.
        """
        self._check_max_batch(mv)
        interpreters = [self._warm_interpreter(mv) for _ in range(self.batcher.set_count)]
        key = mv.key
        self._delays[key] = (self.config.max_batch_delay_ms / 1000.0
                             if mv.spec.max_queue_delay_ms is None
                             else mv.spec.max_queue_delay_ms / 1000.0)
        self.batcher.add_interpreters(key, interpreters)
        self.versions[key] = mv
        self.stats.register(key)
        self.metrics.ready.labels(*key).set(1)
        self.metrics.runs_on.labels(*key, mv.runs_on,
                                    "1" if mv.delegate_fallback else "0").set(1)

    def busy(self, key: tuple[str, str]) -> int:
        """Requests for the version ``key`` now being validated, queued or run."""
        with self._lock:
            return self._in_flight_by_key.get(key, 0)

    def remove_version(self, key: tuple[str, str]) -> None:
        """Free the version ``key`` (already unpublished, with no request in flight)."""
        self.batcher.remove_interpreters(key)
        self.versions.pop(key, None)
        self.metrics.ready.labels(*key).set(0)

    def _execute(self, key, interpreter, tensors: tuple[np.ndarray, ...]):
        t0 = time.perf_counter()
        raw = interpreter.run(tensors)
        t1 = time.perf_counter()
        out = self.versions[key].task.finish(raw)
        t2 = time.perf_counter()
        return out, t1 - t0, t2 - t1

    def _on_batch(self, key, rows: int, batch: list[Request]) -> None:
        t = batch[0].timings
        self.stats.batch(key, rows, t.inference, t.postprocess)
        self.metrics.batch_size.labels(key[0]).observe(rows)
        self.metrics.items.labels(*key).inc(rows)

    # -- requests --------------------------------------------------------------------------
    def resolve(self, model: str, version: str = "") -> ModelVersion:
        """The loaded version that serves ``model`` (``version`` "" for the newest)."""
        return self.versions[self.repository.resolve(model, version).key]

    def check_declared(self, model: str, version: str,
                       declared: list[tuple[str, np.dtype | None, tuple[int, ...]]]) -> None:
        """Refuse a request by its inputs' declared names, dtypes and shapes (in request
        order), before their data is decoded; raises what ``infer`` would for them."""
        task = self.resolve(model, version).task
        for i, (name, dtype, shape) in enumerate(declared):
            task.check_declared(f"inputs[{i}]", name, dtype, shape)

    def infer(self, model: str, version: str, inputs: dict[str, np.ndarray],
              timeout: float | None = None,
              parameters: Mapping[str, Any] | None = None) -> InferResult:
        """Run one request; ``timeout`` is the seconds left of the caller's deadline and
        ``parameters`` the request's parameters (a task may act on some, e.g. ``dequantize``;
        ``segment`` names the drift window the request counts in).
        """
        t_start = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:  # counted before resolving: a retiring version waits for it
            self._in_flight += 1
            mv = None
            try:
                mv = self.resolve(model, version)
            finally:
                if mv is None:
                    self._in_flight -= 1
            self._in_flight_by_key[mv.key] = self._in_flight_by_key.get(mv.key, 0) + 1
        task = mv.task
        self.metrics.in_flight.inc()
        outcome = "error"
        try:
            t0 = time.perf_counter()
            rows, tensors = task.prepare(inputs)
            pre = time.perf_counter() - t0
            req = self.batcher.submit(mv.key, tensors, rows, deadline)
            self.metrics.queue_depth.set(self.batcher.depth)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                arrays = req.future.result(timeout=remaining)
            except TimeoutError:
                req.future.cancel()
                raise DeadlineExceededError(
                    f"deadline exceeded after {timeout:.3f}s (queue depth "
                    f"{self.batcher.depth})"
                ) from None
            req.timings.preprocess = pre
            arrays = task.respond(arrays, parameters or {})
            if mv.profile is not None:
                self._observe(mv, inputs, arrays, (parameters or {}).get("segment", ""))
            outcome = "success"
            return InferResult(
                mv, {o.name: a for o, a in zip(task.outputs, arrays, strict=True)}, req)
        except EdgeNodeError as exc:
            outcome = OUTCOMES.get(type(exc), "error")
            raise
        finally:
            self._finished(mv, outcome, time.perf_counter() - t_start,
                           req.timings if outcome == "success" else None)

    def _observe(self, mv: ModelVersion, inputs: dict[str, np.ndarray],
                 arrays: tuple[np.ndarray, ...], segment: str) -> None:
        """Count an answered request in its drift window; a failure there is logged once
        and never fails the request."""
        task = mv.task
        try:
            self.drift.observe(mv, segment, inputs.get(task.inputs[0].name),
                               task.confidences(arrays))
        except Exception:
            if not self._drift_failed:
                self._drift_failed = True
                log.exception("drift statistics failed for %s version %s (the request was "
                              "answered; logged once)", *mv.key)

    def _finished(self, mv: ModelVersion, outcome: str, total: float, timings) -> None:
        """Account one request in the gauges, metrics, statistics and latency EWMA."""
        with self._lock:
            self._in_flight -= 1
            self._in_flight_by_key[mv.key] -= 1
            if timings is not None:
                ms = total * 1000.0
                self.latency_ewma_ms = ms if not self.latency_ewma_ms else (
                    LATENCY_ALPHA * ms + (1 - LATENCY_ALPHA) * self.latency_ewma_ms)
        self.metrics.in_flight.dec()
        self.metrics.queue_depth.set(self.batcher.depth)
        self.metrics.requests.labels(mv.spec.name, mv.version, outcome).inc()
        self.metrics.latency.labels(mv.spec.name, "total").observe(total)
        if timings is not None:
            for phase in ("queue", "preprocess", "inference", "postprocess"):
                self.metrics.latency.labels(mv.spec.name, phase).observe(getattr(timings, phase))
            self.stats.request(mv.key, True, total, timings.queue, timings.preprocess,
                               timings.inference, timings.postprocess)
        elif outcome in ("error", "deadline_exceeded"):
            self.stats.request(mv.key, False, total, 0, 0, 0, 0)
