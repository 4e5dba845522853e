"""Clients of the coordinator's own services (Fleet, Jobs): used by the CLI and the demo."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from coordinator.jobs.items import ItemSource
from edgeshard.transport import message_options, open_channel
from protos import codec, fleet_pb2, fleet_pb2_grpc

CHUNK_BYTES = 2 * 1024 * 1024  # item bytes per Submit message


@dataclass(frozen=True)
class Record:
    """One job result as FetchResults streams it; ``provisional`` marks a degraded edge
    answer still waiting for the cloud."""

    seq: int
    id: str
    label: int
    confidence: float
    tier: str
    node: str
    model_version: str
    extra: dict
    provisional: bool = False

    def as_json(self) -> str:
        """The record as one JSON line of the results file (id, label, confidence, tier,
        node, model_version, and the cascade fields in ``extra``)."""
        out = {"id": self.id, "label": self.label, "confidence": round(self.confidence, 6),
               "tier": self.tier, "node": self.node, "model_version": self.model_version}
        out.update(self.extra)
        return json.dumps(out)


class CoordinatorClient:
    """A client of the coordinator's Fleet and Jobs services (the CLI's and the demo's).

    Every call has a timeout (seconds); failures raise ``grpc.RpcError``."""

    def __init__(self, address: str, max_message_bytes: int = 64 * 1024 * 1024):
        self.address = address
        self.channel = open_channel(address, options=[
            *message_options(max_message_bytes),
            # After an outage the CLI reconnects within 2 s, not gRPC's back-off of minutes.
            ("grpc.max_reconnect_backoff_ms", 2000),
        ])
        self.fleet = fleet_pb2_grpc.FleetStub(self.channel)
        self.jobs = fleet_pb2_grpc.JobsStub(self.channel)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    # -- fleet -----------------------------------------------------------------------------
    def listing(self, timeout: float = 10.0):
        """The whole ``ListNodesResponse``: the nodes and, with a cascade, the cloud tier."""
        return self.fleet.ListNodes(fleet_pb2.ListNodesRequest(), timeout=timeout)

    def nodes(self, timeout: float = 10.0) -> list:
        """Every node the coordinator knows, as ``NodeInfo`` messages."""
        return list(self.fleet.ListNodes(fleet_pb2.ListNodesRequest(), timeout=timeout).nodes)

    def drain(self, node: str, undo: bool = False, timeout: float = 10.0):
        """Drain (or, with ``undo``, undrain) ``node`` (id or ``host:port``); its ``NodeInfo``."""
        call = self.fleet.Undrain if undo else self.fleet.Drain
        return call(fleet_pb2.DrainRequest(node_id=node), timeout=timeout)

    # -- jobs ------------------------------------------------------------------------------
    def submit(self, model: str, items: ItemSource, shard_size: int = 0, job_id: str = "",
               model_version: str = "", params: dict[str, str] | None = None,
               timeout: float = 600.0):
        """Stream the items to the coordinator; returns the JobStatus. Safe to retry with
        the same ``job_id`` (one is generated when empty)."""
        job_id = job_id or uuid.uuid4().hex
        per_item = max(1, int(np.prod(items.item_shape)) * items.dtype.itemsize)
        rows = max(1, CHUNK_BYTES // per_item)

        def messages() -> Iterator[fleet_pb2.SubmitRequest]:
            yield fleet_pb2.SubmitRequest(header=fleet_pb2.JobHeader(
                job_id=job_id, model=model, model_version=model_version,
                shard_size=shard_size, total_items=len(items), params=params or {}))
            for ids, array in items.batches(rows):
                datatype, shape, raw = codec.encode_array(array)
                yield fleet_pb2.SubmitRequest(items=fleet_pb2.ItemBatch(
                    ids=ids, datatype=datatype, shape=shape, data=raw))

        return self.jobs.Submit(messages(), timeout=timeout)

    def get(self, job_id: str, timeout: float = 10.0):
        """The job's ``JobStatus``."""
        return self.jobs.GetJob(fleet_pb2.JobRef(job_id=job_id), timeout=timeout)

    def cancel(self, job_id: str, timeout: float = 10.0):
        """Cancel the job; its ``JobStatus`` afterwards."""
        return self.jobs.Cancel(fleet_pb2.JobRef(job_id=job_id), timeout=timeout)

    def list_jobs(self, timeout: float = 10.0) -> list:
        """Every job's ``JobStatus``, oldest first."""
        return list(self.jobs.ListJobs(fleet_pb2.ListJobsRequest(), timeout=timeout).jobs)

    def watch(self, job_id: str, interval: float = 0.5, timeout: float | None = None):
        """A stream of the job's ``JobStatus`` on every change until it finishes."""
        return self.jobs.Watch(fleet_pb2.WatchRequest(job_id=job_id, interval_s=interval),
                               timeout=timeout)

    def results(self, job_id: str, after_seq: int = 0, follow: bool = False,
                timeout: float | None = None, include_pending: bool = False
                ) -> Iterator[Record]:
        """The job's results after ``after_seq`` in commit order; with ``follow``, until
        the job finishes."""
        stream = self.jobs.FetchResults(fleet_pb2.FetchResultsRequest(
            job_id=job_id, after_seq=after_seq, follow=follow,
            include_pending=include_pending), timeout=timeout)
        for r in stream:
            yield Record(r.seq, r.id, r.label, r.confidence, r.tier, r.node, r.model_version,
                         json.loads(r.extra_json) if r.extra_json else {}, r.provisional)
