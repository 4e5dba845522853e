"""``edgeshard.v1.Jobs``: submit sharded batch jobs, watch them, stream their results."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from coordinator.errors import InvalidJobError, JobInputError, ModelNotServedError
from coordinator.jobinput import ItemSource
from coordinator.jobs import JobProgress
from coordinator.jobstore import JobStore
from coordinator.servicer import guard
from protos import codec, fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

FINISHED = ("done", "cancelled", "failed")
RESULT_PAGE = 512
WATCH_KEEPALIVE_S = 2.0


class JobsServicer(fleet_pb2_grpc.JobsServicer):
    def __init__(self, store: JobStore, default_shard_size: int,
                 max_batch_size: Callable[[str], int | None],
                 on_submit: Callable[[], None], shares: Callable[[str], dict[str, int]],
                 stopping: threading.Event, model_known: Callable[[str], bool],
                 pending: Callable[[str], list] = lambda job_id: []):
        self.store = store
        self.default_shard_size = default_shard_size
        self.max_batch_size = max_batch_size  # model -> its max batch at the nodes (or None)
        self.on_submit = on_submit
        self.shares = shares
        self.stopping = stopping
        self.model_known = model_known  # does any known node serve this model?
        self.pending = pending  # job -> degraded edge answers waiting in the spool

    def _status(self, p: JobProgress) -> fleet_pb2.JobStatus:
        return fleet_pb2.JobStatus(
            job_id=p.job_id, model=p.model, state=p.state, total_items=p.total_items,
            done_items=p.done_items, shards_total=p.shards_total, shards_done=p.shards_done,
            shards_leased=p.shards_leased, created_at=p.created_at,
            finished_at=p.finished_at or 0.0, error=p.error or "",
            pending_escalations=p.pending_escalations, cloud_answered=p.cloud_answered,
            degraded=p.degraded,
            shares=[fleet_pb2.NodeShare(node=n, items=c)
                    for n, c in sorted(self.shares(p.job_id).items())],
        )

    @guard
    def Submit(self, request_iterator, context):
        header = None
        ids: list[str] = []
        arrays: list[np.ndarray] = []
        for i, part in enumerate(request_iterator):
            kind = part.WhichOneof("part")
            if kind == "header":
                if header is not None:
                    raise InvalidJobError(f"message {i}: a second header; send exactly one")
                header = part.header
            elif kind == "items":
                if header is None:
                    raise InvalidJobError("message 0: the first message must be the header")
                batch = part.items
                array = codec.decode_array(f"items[{i}]", batch.datatype, list(batch.shape),
                                           batch.data)
                if array.ndim < 2:
                    raise JobInputError(f"items[{i}].shape: need [n, ...item shape], "
                                        f"got {list(batch.shape)}")
                if batch.ids and len(batch.ids) != len(array):
                    raise JobInputError(f"items[{i}].ids: {len(batch.ids)} ids for "
                                        f"{len(array)} items")
                ids.extend(batch.ids or [str(len(ids) + k) for k in range(len(array))])
                arrays.append(array)
            else:
                raise InvalidJobError(f"message {i}: empty; set header or items")
        if header is None:
            raise InvalidJobError("header: missing; the first message must be the header")
        if not self.model_known(header.model):
            raise ModelNotServedError(f"model: no node serves {header.model!r}")
        if not arrays:
            raise JobInputError("items: the job has no items")
        shapes = {(a.dtype.str, a.shape[1:]) for a in arrays}
        if len(shapes) > 1:
            raise JobInputError(f"items: every batch must share dtype and item shape, got "
                                f"{sorted((d, list(s)) for d, s in shapes)}")
        array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        if header.total_items and header.total_items != len(array):
            raise JobInputError(f"total_items: header said {header.total_items}, "
                                f"received {len(array)} (stream cut short?)")
        shard_size = header.shard_size or self.default_shard_size
        limit = self.max_batch_size(header.model)
        if limit is not None and shard_size > limit:
            shard_size = limit  # one shard = one batched request; stay within the model
        params = dict(header.params)
        if header.model_version:
            params["model_version"] = header.model_version
        info = self.store.create_job(header.model, ItemSource.from_arrays(ids, array),
                                     shard_size, params, job_id=header.job_id or None)
        if not info.existing:
            log.info("job %s submitted: %s, %d items, %d shards of <= %d", info.job_id,
                     info.model, info.total_items, info.shard_count, shard_size)
        self.on_submit()
        return self._status(self.store.progress(info.job_id))

    @guard
    def GetJob(self, request, context):
        return self._status(self.store.progress(request.job_id))

    @guard
    def ListJobs(self, request, context):
        return fleet_pb2.ListJobsResponse(jobs=[self._status(p) for p in self.store.list_jobs()])

    @guard
    def Cancel(self, request, context):
        return self._status(self.store.cancel(request.job_id))

    @guard
    def Watch(self, request, context):
        interval = request.interval_s if request.interval_s > 0 else 0.5
        last, sent = None, 0.0
        while context.is_active() and not self.stopping.is_set():
            p = self.store.progress(request.job_id)
            key = (p.state, p.done_items, p.shards_leased, p.pending_escalations)
            if key != last or time.monotonic() - sent >= WATCH_KEEPALIVE_S:
                yield self._status(p)  # on change, and now and then so clients see it live
                last, sent = key, time.monotonic()
            if p.state in FINISHED:
                return
            self.stopping.wait(interval)

    @guard
    def FetchResults(self, request, context):
        after = request.after_seq
        while context.is_active():
            state = self.store.progress(request.job_id).state  # before reading: no gap
            rows = self.store.results(request.job_id, after_seq=after, limit=RESULT_PAGE)
            for r in rows:
                yield _record(r)
                after = r.seq
            if len(rows) == RESULT_PAGE:
                continue
            if not request.follow or state in FINISHED or self.stopping.is_set():
                if request.include_pending and not request.follow:
                    for r in self.pending(request.job_id):
                        yield _record(r, provisional=True)
                return
            time.sleep(0.1)


def _record(r, provisional: bool = False) -> fleet_pb2.ResultRecord:
    return fleet_pb2.ResultRecord(
        seq=r.seq, id=r.item_id, label=r.label, confidence=r.confidence, tier=r.tier,
        node=r.node, model_version=r.model_version,
        extra_json=json.dumps(r.extra) if r.extra else "", provisional=provisional)
