"""What the Jobs API does, without the transport: submit, inspect, cancel, follow.

``JobService`` sits between the Jobs servicer and the job store. ``watch`` and
``results`` are generators the servicer streams from; they poll the store and stop when
the caller goes away, the job finishes or the coordinator shuts down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from coordinator.errors import ModelNotServedError
from coordinator.fleet.catalog import ModelCatalog
from coordinator.jobs.model import JobProgress, ResultRow
from coordinator.jobs.store import JobStore
from coordinator.jobs.submission import Submission

log = logging.getLogger(__name__)

RESULT_PAGE = 512  # results read from the store per query
WATCH_KEEPALIVE_S = 2.0  # Watch repeats an unchanged status this often
FOLLOW_POLL_S = 0.1  # how often a following results stream looks for new rows


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

    def submit(self, submission: Submission) -> JobProgress:
        """Store a streamed job (idempotent for a repeated ``job_id``) and wake the pullers.

        The shard size is capped at the model's max batch size at the nodes, since one
        shard is one batched request. Raises ``ModelNotServedError`` when no known node
        serves the model, and the submission's own validation errors.
        """
        header = submission.header()
        if not self.catalog.known(header.model):
            raise ModelNotServedError(f"model: no node serves {header.model!r}")
        request, items = submission.finish()
        shard_size = request.shard_size or self.default_shard_size
        limit = self.catalog.max_batch_size(request.model)
        if limit is not None and shard_size > limit:
            shard_size = limit
        params = dict(request.params)
        if request.model_version:
            params["model_version"] = request.model_version
        info = self.store.create_job(request.model, items, shard_size, params,
                                     job_id=request.job_id or None)
        if not info.existing:
            log.info("job %s submitted: %s, %d items, %d shards of <= %d", info.job_id,
                     info.model, info.total_items, info.shard_count, shard_size)
        self.on_submit()
        return self.store.progress(info.job_id)

    def get(self, job_id: str) -> JobProgress:
        """The job's progress; ``JobNotFoundError`` if there is no such job."""
        return self.store.progress(job_id)

    def list(self) -> list[JobProgress]:
        """Every job, oldest first."""
        return self.store.list_jobs()

    def cancel(self, job_id: str) -> JobProgress:
        """Cancel a running job (a finished one is left as it is)."""
        return self.store.cancel(job_id)

    def shares(self, job_id: str) -> dict[str, int]:
        """Results per node id for the job."""
        return self.store.shares(job_id)

    def watch(self, job_id: str, interval: float,
              active: Callable[[], bool]) -> Iterator[JobProgress]:
        """The job's progress on every change (polled each ``interval`` seconds) and at
        least every ``WATCH_KEEPALIVE_S``, until it finishes, ``active()`` turns false or
        the coordinator stops."""
        last, sent = None, 0.0
        while active() and not self.stopping.is_set():
            p = self.store.progress(job_id)
            key = (p.state, p.done_items, p.shards_leased, p.pending_escalations)
            if key != last or time.monotonic() - sent >= WATCH_KEEPALIVE_S:
                yield p
                last, sent = key, time.monotonic()
            if p.state.finished:
                return
            self.stopping.wait(interval)

    def results(self, job_id: str, after_seq: int, follow: bool, include_pending: bool,
                active: Callable[[], bool]) -> Iterator[tuple[ResultRow, bool]]:
        """``(result, provisional)`` with ``seq > after_seq`` in seq order.

        With ``follow``, waits for new results until the job finishes (or ``active()``
        turns false, or the coordinator stops). Without it, stops at the last committed
        result, then, with ``include_pending``, yields the degraded edge answers of items
        still waiting for the cloud, marked provisional.
        """
        after = after_seq
        while active():
            state = self.store.progress(job_id).state  # before reading: no gap
            rows = self.store.results(job_id, after_seq=after, limit=RESULT_PAGE)
            for r in rows:
                yield r, False
                after = r.seq
            if len(rows) == RESULT_PAGE:
                continue
            if not follow or state.finished or self.stopping.is_set():
                if include_pending and not follow:
                    for r in self.pending(job_id):
                        yield r, True
                return
            time.sleep(FOLLOW_POLL_S)
