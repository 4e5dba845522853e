"""What the Jobs API does, without the transport: submit, inspect, cancel, follow.

``JobService`` sits between the Jobs servicer and the job store. ``watch`` and
``results`` are generators the servicer streams from; they poll the store and stop when
the caller goes away (``gone`` is set: they wake at once, whatever the interval), the
job finishes or the coordinator shuts down. Client-chosen intervals and positions are
checked (``InvalidJobError`` naming the field).

Ownership: a job records who submitted it (``owner``, a bearer token's name). Every call
takes a ``scope``: the owner whose jobs it may touch, or None for any job (an admin, or a
coordinator without authentication). A job outside the scope raises ``JobAccessError``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from coordinator.errors import InvalidJobError, JobAccessError, ModelNotServedError
from coordinator.fleet.catalog import ModelCatalog
from coordinator.jobs.model import JobProgress, ResultRow
from coordinator.jobs.store import JobStore
from coordinator.jobs.submission import Submission

log = logging.getLogger(__name__)

RESULT_PAGE = 512  # results read from the store per query
WATCH_KEEPALIVE_S = 2.0  # Watch repeats an unchanged status this often
FOLLOW_POLL_S = 0.1  # how often a following results stream looks for new rows
MAX_WATCH_INTERVAL_S = 60.0  # the longest poll interval a Watch caller may ask for
STOP_CHECK_S = 0.25  # a waiting stream notices a coordinator shutdown this fast


class JobService:
    """Jobs over one store. ``on_submit`` wakes the dispatcher; ``stopping`` is set when
    the coordinator drains (streams end); ``pending(job_id)`` lists the degraded edge
    answers still waiting in the spool."""

    def __init__(self, store: JobStore, catalog: ModelCatalog, default_shard_size: int,
                 on_submit: Callable[[], None], stopping: threading.Event,
                 pending: Callable[[str], list[ResultRow]] = lambda job_id: []):
        self.store = store
        self.catalog = catalog
        self.default_shard_size = default_shard_size
        self.on_submit = on_submit
        self.stopping = stopping
        self.pending = pending

    def submit(self, submission: Submission, owner: str = "",
               scope: str | None = None) -> JobProgress:
        """Store a streamed job of ``owner`` (idempotent for a repeated ``job_id``, which
        must be in ``scope``) and wake the pullers.

        The shard size is capped at the model's max batch size at the nodes, since one
        shard is one batched request. The first item is run on a live node first, so items
        the model cannot take are refused now, not after every shard failed. Raises
        ``ModelNotServedError`` when no known node serves the model, ``JobInputError``
        when the model refuses the items, and the submission's own validation errors.
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
        first_ids, first = next(items.batches(1))
        self.catalog.check_item(request.model, request.model_version, first_ids[0], first)
        shard_size = request.shard_size or self.default_shard_size
        limit = self.catalog.max_batch_size(request.model)
        if limit is not None and shard_size > limit:
            shard_size = limit
        params = dict(request.params)
        if request.model_version:
            params["model_version"] = request.model_version
        info = self.store.create_job(request.model, items, shard_size, params,
                                     job_id=request.job_id or None, owner=owner)
        if info.existing:
            _check_scope(info.job_id, info.owner, scope)
        else:
            log.info("job %s submitted: %s, %d items, %d shards of <= %d", info.job_id,
                     info.model, info.total_items, info.shard_count, shard_size)
        self.on_submit()
        return self.store.progress(info.job_id)

    def get(self, job_id: str, scope: str | None = None) -> JobProgress:
        """The job's progress; ``JobNotFoundError`` if there is no such job,
        ``JobAccessError`` if it is not in ``scope``."""
        p = self.store.progress(_required(job_id))
        _check_scope(job_id, p.owner, scope)
        return p

    def list(self, scope: str | None = None) -> list[JobProgress]:
        """Every job in ``scope``, oldest first."""
        return self.store.list_jobs(owner=scope)

    def cancel(self, job_id: str, scope: str | None = None) -> JobProgress:
        """Cancel a running job in ``scope`` (a finished one is left as it is)."""
        self.get(job_id, scope)
        return self.store.cancel(job_id)

    def shares(self, job_id: str) -> dict[str, int]:
        """Results per node id for the job."""
        return self.store.shares(job_id)

    def watch(self, job_id: str, interval: float, gone: threading.Event,
              scope: str | None = None) -> Iterator[JobProgress]:
        """The job's progress on every change (polled each ``interval`` seconds, 0: every
        0.5 s, at most ``MAX_WATCH_INTERVAL_S``) and at least every ``WATCH_KEEPALIVE_S``,
        until it finishes, the caller is ``gone`` or the coordinator stops."""
        if not (math.isfinite(interval) and 0 <= interval <= MAX_WATCH_INTERVAL_S):
            raise InvalidJobError(f"interval_s: must be between 0 and {MAX_WATCH_INTERVAL_S:g} "
                                  f"seconds (0: the default 0.5), got {interval}")
        interval = interval or 0.5
        self.get(job_id, scope)  # JobNotFoundError / JobAccessError before the first wait
        last, sent = None, 0.0
        while not gone.is_set() and not self.stopping.is_set():
            p = self.store.progress(job_id)
            key = (p.state, p.done_items, p.shards_leased, p.pending_escalations)
            if key != last or time.monotonic() - sent >= WATCH_KEEPALIVE_S:
                yield p
                last, sent = key, time.monotonic()
            if p.state.finished:
                return
            self._wait(gone, min(interval, WATCH_KEEPALIVE_S))

    def results(self, job_id: str, after_seq: int, follow: bool, include_pending: bool,
                gone: threading.Event,
                scope: str | None = None) -> Iterator[tuple[ResultRow, bool]]:
        """``(result, provisional)`` with ``seq > after_seq`` in seq order.

        Each result carries its class's ``label_name`` in ``extra`` when the model's
        config names its classes. With ``follow``, waits for new results until the job
        finishes (or the caller is ``gone``, or the coordinator stops). Without it, stops
        at the last committed result, then, with ``include_pending``, yields the degraded
        edge answers of items still waiting for the cloud, marked provisional.
        """
        after = after_seq
        model = self.get(job_id, scope).model
        while not gone.is_set():
            state = self.store.progress(job_id).state  # before reading: no gap
            rows = self.store.results(job_id, after_seq=after, limit=RESULT_PAGE)
            labels = self.catalog.labels(model)
            for r in rows:
                yield _named(r, labels), False
                after = r.seq
            if len(rows) == RESULT_PAGE:
                continue
            if not follow or state.finished or self.stopping.is_set():
                if include_pending and not follow:
                    labels = self.catalog.labels(model)
                    for r in self.pending(job_id):
                        yield _named(r, labels), True
                return
            self._wait(gone, FOLLOW_POLL_S)

    def _wait(self, gone: threading.Event, seconds: float) -> None:
        """Sleep ``seconds``, waking early when the caller is gone or the coordinator stops."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or gone.wait(min(remaining, STOP_CHECK_S)):
                return


def _named(row: ResultRow, labels: tuple[str, ...]) -> ResultRow:
    """``row`` with ``extra["label_name"]``: the model's name for its label, if it has one."""
    if not 0 <= row.label < len(labels):
        return row
    return replace(row, extra={**row.extra, "label_name": labels[row.label]})


def _check_scope(job_id: str, owner: str, scope: str | None) -> None:
    """``JobAccessError`` unless a job of ``owner`` is in ``scope`` (None: every job)."""
    if scope is not None and owner != scope:
        raise JobAccessError(f"job_id: job {job_id!r} was submitted by another token's "
                             "holder; only it (or an admin) may see or cancel it")


def _required(job_id: str) -> str:
    """``job_id``, or ``InvalidJobError`` when it is empty."""
    if not job_id:
        raise InvalidJobError("job_id: required; `edge-coordinator jobs` lists them")
    return job_id
