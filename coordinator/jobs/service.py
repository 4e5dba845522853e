"""What the Jobs API does, without the transport: submit, inspect, cancel, follow.

``JobService`` sits between the Jobs servicer and the job store. ``watch`` and
``results`` are async generators the servicer streams from: they read the store on a
thread pool, wait on the job's signal (``coordinator.jobs.signals``) with a timeout in
between, hold no thread while waiting, and stop when the job finishes or the
coordinator shuts down (a caller that goes away cancels them). Client-chosen intervals
and positions are checked (``InvalidJobError`` naming the field).

Ownership: a job records who submitted it (``owner``, a bearer token's name). Every call
takes a ``scope``: the owner whose jobs it may touch, or None for any job (an admin, or a
coordinator without authentication). A job outside the scope raises ``JobAccessError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from coordinator.errors import (
    InvalidJobError,
    JobAccessError,
    JobNotFoundError,
    ModelNotServedError,
)
from coordinator.fleet.catalog import ModelCatalog
from coordinator.jobs.model import JobProgress, ResultRow
from coordinator.jobs.runner import OUTPUTS_PARAM, TASK_PARAM
from coordinator.jobs.signals import JobSignals
from coordinator.jobs.signature import plan_job
from coordinator.jobs.store import JobStore
from coordinator.jobs.submission import Submission

log = logging.getLogger(__name__)

RESULT_PAGE = 512  # results read from the store per query
RESULT_PAGE_BYTES = 32 * 1024 * 1024  # ... or fewer, when their outputs weigh this much
WATCH_KEEPALIVE_S = 2.0  # Watch repeats an unchanged status this often
FOLLOW_POLL_S = 0.5  # a following stream looks for unsignalled results (other replicas)
MAX_WATCH_INTERVAL_S = 60.0  # the longest poll interval a Watch caller may ask for
SNAPSHOT_TTL_S = 0.25  # followers of one job share a progress read this long
MAX_SNAPSHOTS = 4096  # jobs whose last progress read is kept
MAX_JOB_ID_CHARS = 128  # as the store's JOB_ID_PATTERN allows
MAX_PAGE = 1000  # jobs per ListJobs answer (a JobStatus is ~200 bytes)
MESSAGE_HEADROOM = 64 * 1024  # a shard's request: item bytes plus ids, names, parameters


class JobService:
    """Jobs over one store. ``on_submit`` wakes the dispatcher; ``stopping`` is set when
    the coordinator drains (streams end); ``pending(job_id)`` lists the degraded edge
    answers still waiting in the spool; ``max_shard_bytes`` is what one shard's items
    (and its answer) may weigh (the message limit to nodes less headroom);
    ``cascaded(model)`` says whether a model has a cascade rule."""

    def __init__(self, store: JobStore, catalog: ModelCatalog, default_shard_size: int,
                 on_submit: Callable[[], None], stopping: threading.Event,
                 pending: Callable[[str], list[ResultRow]] = lambda job_id: [],
                 signals: JobSignals | None = None,
                 run_blocking: Callable[..., Awaitable[Any]] = asyncio.to_thread,
                 max_shard_bytes: int = 64 * 1024 * 1024 - MESSAGE_HEADROOM,
                 cascaded: Callable[[str], bool] = lambda model: False):
        self.store = store
        self.catalog = catalog
        self.default_shard_size = default_shard_size
        self.on_submit = on_submit
        self.stopping = stopping
        self.pending = pending
        self.signals = signals or JobSignals()  # who to wake when a job changes
        self._snapshots: dict[str, tuple[float, JobProgress, dict[str, int]]] = {}
        self._snapshots_lock = threading.Lock()
        # How the followers (coroutines) run store reads: off the event loop.
        self.run_blocking = run_blocking
        self.max_shard_bytes = max_shard_bytes  # item bytes one shard's request may carry
        self.cascaded = cascaded

    def submit(self, submission: Submission, owner: str = "",
               scope: str | None = None) -> JobProgress:
        """Store a streamed job of ``owner`` (idempotent for a repeated ``job_id``, which
        must be in ``scope``) and wake the pullers.

        The items and requested outputs are checked against the model's metadata
        (``coordinator.jobs.signature``). The shard size is capped at the model's max batch
        size at the nodes, since one shard is one batched request (1 for a model that
        cannot batch), and lowered until a shard's items and its answer each fit in one
        message. The first item is run on a live node first, so items the model cannot
        take are refused now, not after every shard failed. Raises
        ``ModelNotServedError`` when no known node serves the model, ``JobInputError``
        when the model refuses the items, ``InvalidJobError`` for outputs it does not
        have or a model with several inputs, ``CascadeUnsupportedError`` for a cascaded
        model that is not a classifier, and the submission's own validation errors.
        """
        header = submission.header()
        if not header.model:
            raise InvalidJobError("model: required; name the model to run the items with")
        if not self.catalog.known(header.model):
            served = ", ".join(self.catalog.registry.served_models()) or "none"
            raise ModelNotServedError(f"model: no node serves {header.model!r} (served: "
                                      f"{served})")
        if header.model_version and not self.catalog.known(header.model, header.model_version):
            raise ModelNotServedError(f"model_version: no node serves {header.model!r} "
                                      f"version {header.model_version!r}")
        request, items = submission.finish()
        plan = plan_job(request.model, self.catalog.facts(request.model), items.dtype,
                        items.item_shape, request.outputs, self.cascaded(request.model))
        first_ids, first = next(items.batches(1))
        answer_bytes = self.catalog.check_item(request.model, request.model_version,
                                               first_ids[0], first) or 0
        shard_size = request.shard_size or self.default_shard_size
        limit = self.catalog.max_batch_size(request.model) if plan.batched else 1
        if limit is not None and shard_size > limit:
            shard_size = limit
        shard_size = self._fit_message(shard_size, items, max(answer_bytes,
                                                              plan.answer_bytes))
        params = dict(request.params)
        if request.model_version:
            params["model_version"] = request.model_version
        if plan.task is not None:
            params[TASK_PARAM] = plan.task
        if plan.outputs:
            params[OUTPUTS_PARAM] = json.dumps(list(plan.outputs))
        info = self.store.create_job(request.model, items, shard_size, params,
                                     job_id=request.job_id or None, owner=owner)
        if info.existing:
            _check_scope(info.job_id, info.owner, scope)
        else:
            log.info("job %s submitted: %s, %d items, %d shards of <= %d", info.job_id,
                     info.model, info.total_items, info.shard_count, shard_size)
        self.on_submit()
        return self.store.progress(info.job_id)

    def _fit_message(self, shard_size: int, items, answer_bytes: int = 0) -> int:
        """``shard_size``, lowered so that a shard's items fit in one gRPC message to a
        node (``max_shard_bytes``), and so does the node's answer (``answer_bytes`` per
        item: outputs can be larger than inputs); ``InvalidJobError`` when one item alone
        does not."""
        item_bytes = items.dtype.itemsize * math.prod(items.item_shape)
        for what, size in (("item", item_bytes), ("item's answer", answer_bytes)):
            if size > self.max_shard_bytes:
                raise InvalidJobError(
                    f"items: one {what} is {size} bytes, more than a shard may carry "
                    f"({self.max_shard_bytes} bytes: the coordinator's max_message_bytes less "
                    "room for the request); send smaller items or raise --max-message-bytes")
        per_item = max(1, item_bytes, answer_bytes)
        fitting = max(1, self.max_shard_bytes // per_item)
        if shard_size > fitting:
            log.info("shard size %d lowered to %d: %d bytes per item (request or answer) in "
                     "one message of at most %d bytes", shard_size, fitting, per_item,
                     self.max_shard_bytes)
            return fitting
        return shard_size

    def get(self, job_id: str, scope: str | None = None) -> JobProgress:
        """The job's progress; ``JobNotFoundError`` if there is no such job,
        ``JobAccessError`` if it is not in ``scope``."""
        p = self.store.progress(_required(job_id))
        _check_scope(job_id, p.owner, scope)
        return p

    def list(self, scope: str | None = None, page_size: int = 0,
             page_token: str = "") -> tuple[list[JobProgress], str]:
        """One page of the jobs in ``scope``, oldest first, and the token of the next page
        ('' after the last). ``page_size`` 0 means ``MAX_PAGE``; ``page_token`` is the
        previous page's. ``InvalidJobError`` for a size over ``MAX_PAGE`` or a token that
        names no job (in ``scope``)."""
        if not 0 <= page_size <= MAX_PAGE:
            raise InvalidJobError(f"page_size: at most {MAX_PAGE} (0: {MAX_PAGE}), got "
                                  f"{page_size}")
        size = page_size or MAX_PAGE
        try:
            jobs = self.store.list_jobs(owner=scope, after_job=page_token or None,
                                        limit=size + 1)
        except JobNotFoundError:
            raise InvalidJobError("page_token: not one this coordinator gave (start again "
                                  "with an empty token)") from None
        if len(jobs) > size:
            return jobs[:size], jobs[size - 1].job_id
        return jobs, ""

    def cancel(self, job_id: str, scope: str | None = None) -> JobProgress:
        """Cancel a running job in ``scope`` (a finished one is left as it is)."""
        self.get(job_id, scope)
        try:
            return self.store.cancel(job_id)
        finally:
            self.signals.notify(job_id)

    def shares(self, job_id: str) -> dict[str, int]:
        """Results per node id for the job."""
        return self.store.shares(job_id)

    def snapshot(self, job_id: str, scope: str | None = None
                 ) -> tuple[JobProgress, dict[str, int]]:
        """The job's progress and its results per node id, read at most every
        ``SNAPSHOT_TTL_S`` for all its followers together (and again after each change
        signalled here). Blocking: a store read. Errors as ``get``."""
        now = time.monotonic()
        with self._snapshots_lock:
            hit = self._snapshots.get(job_id)
        if hit is not None and now - hit[0] < SNAPSHOT_TTL_S \
                and hit[0] > self.signals.changed_at(job_id):
            p, shares = hit[1], hit[2]
        else:
            p = self.store.progress(_required(job_id))
            shares = self.store.shares(job_id)
            with self._snapshots_lock:
                if len(self._snapshots) >= MAX_SNAPSHOTS:  # forget the oldest half
                    for old in sorted(self._snapshots, key=lambda k: self._snapshots[k][0])[
                            :MAX_SNAPSHOTS // 2]:
                        del self._snapshots[old]
                self._snapshots[job_id] = (now, p, shares)
        _check_scope(job_id, p.owner, scope)
        return p, shares

    async def watch(self, job_id: str, interval: float, scope: str | None = None
                    ) -> AsyncIterator[tuple[JobProgress, dict[str, int]]]:
        """``(progress, results per node)`` of a job in ``scope`` on every change, at most
        once per ``interval`` seconds (0: the default 0.5; at most ``MAX_WATCH_INTERVAL_S``)
        and at least every ``WATCH_KEEPALIVE_S``, until it finishes or the coordinator
        stops. A coroutine: it waits on the job's signal, holding no thread."""
        if not (math.isfinite(interval) and 0 <= interval <= MAX_WATCH_INTERVAL_S):
            raise InvalidJobError(f"interval_s: must be between 0 and {MAX_WATCH_INTERVAL_S:g} "
                                  f"seconds (0: the default 0.5), got {interval}")
        interval = interval or 0.5
        _required(job_id)
        with self.signals.subscribe(job_id) as sub:
            last, sent = None, -math.inf
            while not self.stopping.is_set():
                read_at = time.monotonic()
                p, shares = await self.run_blocking(self.snapshot, job_id, scope)
                key = (p.state, p.done_items, p.shards_leased, p.pending_escalations)
                if key != last or time.monotonic() - sent >= WATCH_KEEPALIVE_S:
                    yield p, shares
                    last, sent = key, time.monotonic()
                if p.state.finished:
                    return
                await sub.wait(WATCH_KEEPALIVE_S)  # sooner when the job changes
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - read_at)))

    def _page(self, job_id: str, after: int, model: str, seen: int | None
              ) -> tuple[JobProgress, list[ResultRow] | None, tuple[str, ...]]:
        """The job's progress (read first: no gap), then the results after ``after``, or
        None when its count of final results is still ``seen`` (nothing new)."""
        p, _ = self.snapshot(job_id)
        if p.done_items == seen:
            return p, None, ()
        return (p, self.store.results(job_id, after_seq=after, limit=RESULT_PAGE,
                                      max_bytes=RESULT_PAGE_BYTES),
                self.catalog.labels(model))

    async def results(self, job_id: str, after_seq: int, follow: bool, include_pending: bool,
                      scope: str | None = None) -> AsyncIterator[tuple[ResultRow, bool]]:
        """``(result, provisional)`` with ``seq > after_seq`` in seq order.

        Each result carries its class's ``label_name`` in ``extra`` when the model's
        config names its classes. With ``follow``, waits for new results until the job
        finishes or the coordinator stops (woken by the job's signal, or every
        ``FOLLOW_POLL_S`` for changes made elsewhere). Without it, stops at the last
        committed result, then, with ``include_pending``, yields the degraded edge
        answers of items still waiting for the cloud, marked provisional.
        """
        after, seen = after_seq, None
        with self.signals.subscribe(_required(job_id)) as sub:
            model = (await self.run_blocking(self.get, job_id, scope)).model
            while True:
                p, rows, labels = await self.run_blocking(self._page, job_id, after, model,
                                                          seen)
                for r in rows or ():
                    yield _named(r, labels), False
                    after = r.seq
                if rows and (len(rows) == RESULT_PAGE or rows[-1].outputs):
                    continue  # more to read now (a page of outputs may stop at its bytes)
                seen = p.done_items  # every result it counts is now delivered
                if not follow or p.state.finished or self.stopping.is_set():
                    if include_pending and not follow:
                        labels = self.catalog.labels(model)
                        for r in await self.run_blocking(self.pending, job_id):
                            yield _named(r, labels), True
                    return
                await sub.wait(FOLLOW_POLL_S)


def _named(row: ResultRow, labels: tuple[str, ...]) -> ResultRow:
    """``row`` with ``extra["label_name"]``: the model's name for its label, if it has one."""
    if row.label is None or not 0 <= row.label < len(labels):
        return row
    return replace(row, extra={**row.extra, "label_name": labels[row.label]})


def _check_scope(job_id: str, owner: str, scope: str | None) -> None:
    """``JobAccessError`` unless a job of ``owner`` is in ``scope`` (None: every job)."""
    if scope is not None and owner != scope:
        raise JobAccessError(f"job_id: job {job_id!r} was submitted by another token's "
                             "holder; only it (or an admin) may see or cancel it")


def _required(job_id: str) -> str:
    """``job_id``, or ``InvalidJobError`` when it is empty or longer than a job id can be."""
    if not job_id:
        raise InvalidJobError("job_id: required; `edge-coordinator jobs` lists them")
    if len(job_id) > MAX_JOB_ID_CHARS:
        raise InvalidJobError(f"job_id: at most {MAX_JOB_ID_CHARS} characters, got "
                              f"{len(job_id)}")
    return job_id
