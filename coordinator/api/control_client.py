"""Clients of the coordinator's own services (Fleet, Jobs): used by the CLI and the demo.

``CoordinatorClient`` takes one coordinator address or several (replicas of one fleet on
a shared store: any of them answers any call). Calls go to the current one; a call it
answers UNAVAILABLE (down, unreachable, stopping) is made again on the next address,
each address at most once per call, and the last error is raised when none answers.
Reads, Drain/Undrain and Cancel, which may run twice without harm, also move on after
DEADLINE_EXCEEDED; Submit may move on after UNAVAILABLE because its job id is chosen
here and the store takes the same id with the same items as the same job. The Watch and
FetchResults streams survive the coordinator that serves them: they reopen on the next
address, FetchResults after the last sequence number delivered (nothing twice, nothing
skipped), Watch as a new subscription. The client stays on an address that answers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import grpc
import numpy as np

from coordinator.jobs.items import ItemSource
from coordinator.jobs.model import JobState
from edgeshard.settings import address_list
from edgeshard.transport import message_options, open_channel
from protos import codec, fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

CHUNK_BYTES = 2 * 1024 * 1024  # item bytes per Submit message

# What makes a call worth asking the next coordinator. A call that timed out may have
# run: only those that may run twice move on after DEADLINE_EXCEEDED.
MOVE_ON = frozenset({grpc.StatusCode.UNAVAILABLE})
MOVE_ON_IDEMPOTENT = MOVE_ON | {grpc.StatusCode.DEADLINE_EXCEEDED}

T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    """One job result as FetchResults streams it; ``provisional`` marks a degraded edge
    answer still waiting for the cloud. ``label`` and ``confidence`` are None for a model
    that is not a classifier; ``outputs`` are the job's requested output tensors."""

    seq: int
    id: str
    label: int | None
    confidence: float | None
    tier: str
    node: str
    model_version: str
    extra: dict
    provisional: bool = False
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

    def fields(self) -> dict:
        """The record's JSON fields but its outputs: id, label and confidence (a
        classifier's), tier, node, model_version, and the cascade fields in ``extra``."""
        out: dict = {"id": self.id}
        if self.label is not None:
            out["label"] = self.label
        if self.confidence is not None:
            out["confidence"] = round(self.confidence, 6)
        out.update(tier=self.tier, node=self.node, model_version=self.model_version)
        out.update(self.extra)
        return out

    def as_json(self) -> str:
        """The record as one JSON line, every output inline (``inline_output``)."""
        out = self.fields()
        if self.outputs:
            out["outputs"] = {name: inline_output(a) for name, a in self.outputs.items()}
        return json.dumps(out)


def inline_output(array: np.ndarray) -> dict:
    """An output tensor as JSON: its OIP datatype, shape and values (row-major, flat).
    Float values are the float32/64 values exactly (JSON numbers read back bit-exact)."""
    return {"datatype": codec.datatype_of(array.dtype), "shape": list(array.shape),
            "data": array.reshape(-1).tolist()}


def _record(r) -> Record:
    """A ``ResultRecord`` message as a ``Record``."""
    outputs = {t.name: codec.decode_array(f"outputs[{t.name!r}]", t.datatype, list(t.shape),
                                          t.raw) for t in r.outputs}
    # A coordinator without outputs never sets label's presence: a classifier's label 0
    # arrives unset. Only a result with outputs and no label is not a classifier's.
    labelled = r.HasField("label") or not outputs
    return Record(r.seq, r.id, r.label if labelled else None,
                  r.confidence if r.HasField("confidence") or not outputs else None,
                  r.tier, r.node, r.model_version,
                  json.loads(r.extra_json) if r.extra_json else {}, r.provisional, outputs)


class StreamCutError(grpc.RpcError):
    """Every coordinator ended a stream before its end (all of them stopping); its
    ``code()`` is UNAVAILABLE, like a coordinator that cannot be reached."""

    def __init__(self, addresses: Sequence[str]):
        super().__init__()
        self._details = f"the stream was cut off by every coordinator ({', '.join(addresses)})"

    def code(self) -> grpc.StatusCode:
        """UNAVAILABLE, as ``grpc.Call.code``."""
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        """Which coordinators ended it, as ``grpc.Call.details``."""
        return self._details

    def __str__(self) -> str:
        return f"UNAVAILABLE: {self._details}"


class _Stubs(NamedTuple):
    fleet: fleet_pb2_grpc.FleetStub
    jobs: fleet_pb2_grpc.JobsStub
    rollouts: fleet_pb2_grpc.RolloutsStub


def _why(exc: grpc.RpcError | None) -> str:
    return "ended its stream early" if exc is None else f"{exc.code().name}: {exc.details()}"


class CoordinatorClient:
    """A client of the coordinators' Fleet and Jobs services (the CLI's and the demo's).

    ``address``: one ``HOST:PORT``, a comma-separated list, or a sequence of them (see
    the module's docstring for how calls move between them). Every call has a timeout
    (seconds; per address tried for unary calls, for the whole stream for streams);
    failures raise ``grpc.RpcError``. A stream whose coordinator went away waits up to
    ``reconnect_s`` for each address to accept connections before asking it, so that a
    lone coordinator that restarts is waited for. With ``credentials``
    (``edgeshard.tls.channel_credentials``) every channel is TLS; with ``token`` every
    call carries it as ``authorization: Bearer`` (``edgeshard.auth``). Thread-safe.
    """

    def __init__(self, address: str | Sequence[str], max_message_bytes: int = 64 * 1024 * 1024,
                 reconnect_s: float = 10.0, credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None):
        self.addresses = address_list("coordinator", address)
        if not self.addresses:
            raise ValueError("coordinator: no address given; expected HOST:PORT")
        self.reconnect_s = reconnect_s
        options = message_options(max_message_bytes)
        self._channels = [open_channel(a, options=options, credentials=credentials, token=token)
                          for a in self.addresses]
        self._stubs = [_Stubs(fleet_pb2_grpc.FleetStub(c), fleet_pb2_grpc.JobsStub(c),
                              fleet_pb2_grpc.RolloutsStub(c)) for c in self._channels]
        self._current = 0
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """The coordinator calls go to now."""
        return self.addresses[self._current]

    @property
    def channel(self) -> grpc.Channel:
        """The channel to the current coordinator."""
        return self._channels[self._current]

    @property
    def fleet(self) -> fleet_pb2_grpc.FleetStub:
        """The Fleet stub of the current coordinator (no failover: prefer the methods)."""
        return self._stubs[self._current].fleet

    @property
    def jobs(self) -> fleet_pb2_grpc.JobsStub:
        """The Jobs stub of the current coordinator (no failover: prefer the methods)."""
        return self._stubs[self._current].jobs

    def close(self) -> None:
        """Close the channels."""
        for channel in self._channels:
            channel.close()

    def connect(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until a coordinator accepts a connection (the
        current one preferred) and make it current; False if none did."""
        futures = [grpc.channel_ready_future(c) for c in self._channels]
        some = threading.Event()
        for future in futures:
            future.add_done_callback(lambda _: some.set())
        try:
            some.wait(timeout)
            start = self._current
            for index in self._order(start):
                if futures[index].done() and not futures[index].cancelled():
                    self._move(start, index, "not reachable")
                    return True
            return False
        finally:
            for future in futures:
                future.cancel()

    # -- moving between coordinators -------------------------------------------------------
    def _order(self, start: int) -> list[int]:
        """Every address's index once, ``start`` first."""
        n = len(self.addresses)
        return [(start + k) % n for k in range(n)]

    def _move(self, index: int, to: int, why: str) -> None:
        """Make ``to`` current after ``index`` failed (``why``); no-op when another thread
        moved on from ``index`` already."""
        with self._lock:
            if self._current != index or to == index:
                return
            self._current = to
        log.info("coordinator %s: %s; failing over to %s", self.addresses[index], why,
                 self.addresses[to])

    def _call(self, invoke: Callable[[_Stubs], T], move_on: frozenset = MOVE_ON) -> T:
        """``invoke`` on the current coordinator, then on each next one while it fails
        with a status in ``move_on``; raises the last error."""
        order = self._order(self._current)
        for k, index in enumerate(order):
            try:
                return invoke(self._stubs[index])
            except grpc.RpcError as exc:
                if exc.code() not in move_on or k == len(order) - 1:
                    raise
                self._move(index, order[k + 1], _why(exc))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _wait_ready(self, index: int, deadline: float | None) -> None:
        """Give the address up to ``reconnect_s`` (within ``deadline``) to accept a
        connection; the call made next reports whether it did."""
        wait = self.reconnect_s if deadline is None else min(
            self.reconnect_s, max(0.0, deadline - time.monotonic()))
        future = grpc.channel_ready_future(self._channels[index])
        try:
            future.result(timeout=wait)
        except grpc.FutureTimeoutError:
            pass
        finally:
            future.cancel()

    def _stream(self, open_call: Callable[[_Stubs, float | None], grpc.Call],
                ended_early: Callable[[], bool], deadline: float | None) -> Iterator:
        """The messages of a server stream that survives its coordinator.

        ``open_call(stubs, timeout)`` starts the stream (again: it must ask for what was
        not delivered yet). When it fails with UNAVAILABLE, or ends while
        ``ended_early()`` says there is more, it is reopened on the next address. Each
        address is asked at most once per failure; after a stream that had delivered
        messages broke, its own address is asked again, last, and each address gets up
        to ``reconnect_s`` to accept connections first (a coordinator restarting).
        Raises the last error when none answers.
        """
        index, left, patient, call = self._current, None, False, None
        try:
            while True:
                delivered, error = False, None
                try:
                    if patient:
                        self._wait_ready(index, deadline)
                    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                    call = open_call(self._stubs[index], timeout)
                    for message in call:
                        delivered = True
                        yield message
                    if not ended_early():
                        return
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    error = exc
                if delivered or left is None:  # a new failure: the others, then this one
                    left = self._order(index)[1:] + ([index] if delivered else [])
                    patient = delivered
                if not left:
                    raise error or StreamCutError(self.addresses)
                to = left.pop(0)
                if to == index:
                    log.info("coordinator %s: %s; reconnecting", self.addresses[index],
                             _why(error))
                self._move(index, to, _why(error))
                index = to
        finally:
            if call is not None:
                call.cancel()  # a caller that stops reading leaves no stream open

    # -- fleet -----------------------------------------------------------------------------
    def listing(self, timeout: float = 10.0):
        """The whole ``ListNodesResponse``: the nodes and, with a cascade, the cloud tier."""
        return self._call(lambda s: s.fleet.ListNodes(fleet_pb2.ListNodesRequest(),
                                                      timeout=timeout), MOVE_ON_IDEMPOTENT)

    def nodes(self, timeout: float = 10.0) -> list:
        """Every node the coordinator knows, as ``NodeInfo`` messages."""
        return list(self.listing(timeout).nodes)

    def drain(self, node: str, undo: bool = False, timeout: float = 10.0):
        """Drain (or, with ``undo``, undrain) ``node`` (id or ``host:port``); its ``NodeInfo``."""
        request = fleet_pb2.DrainRequest(node_id=node)
        return self._call(lambda s: (s.fleet.Undrain if undo else s.fleet.Drain)(
            request, timeout=timeout), MOVE_ON_IDEMPOTENT)

    # -- jobs ------------------------------------------------------------------------------
    def rollouts(self, method: str, request, timeout: float = 10.0):
        """The Rollouts service's ``method`` (Status, Start, Promote, Rollback) answer."""
        return self._call(lambda s: getattr(s.rollouts, method)(request, timeout=timeout))

    def submit(self, model: str, items: ItemSource, shard_size: int = 0, job_id: str = "",
               model_version: str = "", params: dict[str, str] | None = None,
               timeout: float = 600.0, outputs: Sequence[str] = ()):
        """Stream the items to the coordinator; returns the JobStatus. Safe to retry with
        the same ``job_id`` (one is generated when empty), which is what a move to the
        next coordinator does: the stream is made again from the start. ``outputs``: the
        output names each result keeps (empty: the model's task decides)."""
        job_id = job_id or uuid.uuid4().hex
        per_item = max(1, int(np.prod(items.item_shape)) * items.dtype.itemsize)
        rows = max(1, CHUNK_BYTES // per_item)

        def messages() -> Iterator[fleet_pb2.SubmitRequest]:
            yield fleet_pb2.SubmitRequest(header=fleet_pb2.JobHeader(
                job_id=job_id, model=model, model_version=model_version,
                shard_size=shard_size, total_items=len(items), params=params or {},
                outputs=list(outputs)))
            for ids, array in items.batches(rows):
                datatype, shape, raw = codec.encode_array(array)
                yield fleet_pb2.SubmitRequest(items=fleet_pb2.ItemBatch(
                    ids=ids, datatype=datatype, shape=shape, data=raw))

        return self._call(lambda s: s.jobs.Submit(messages(), timeout=timeout))

    def get(self, job_id: str, timeout: float = 10.0):
        """The job's ``JobStatus``."""
        return self._call(lambda s: s.jobs.GetJob(fleet_pb2.JobRef(job_id=job_id),
                                                  timeout=timeout), MOVE_ON_IDEMPOTENT)

    def cancel(self, job_id: str, timeout: float = 10.0):
        """Cancel the job; its ``JobStatus`` afterwards."""
        return self._call(lambda s: s.jobs.Cancel(fleet_pb2.JobRef(job_id=job_id),
                                                  timeout=timeout), MOVE_ON_IDEMPOTENT)

    def list_jobs(self, timeout: float = 10.0, page_size: int = 0) -> list:
        """Every job's ``JobStatus``, oldest first, page by page (``page_size`` 0: the
        coordinator's largest); ``timeout`` is per page."""
        jobs, token = [], ""
        while True:
            request = fleet_pb2.ListJobsRequest(page_size=page_size, page_token=token)
            page = self._call(lambda s, r=request: s.jobs.ListJobs(r, timeout=timeout),
                              MOVE_ON_IDEMPOTENT)
            jobs.extend(page.jobs)
            token = page.next_page_token
            if not token:
                return jobs

    def watch(self, job_id: str, interval: float = 0.5, timeout: float | None = None
              ) -> Iterator:
        """A stream of the job's ``JobStatus`` on every change until it finishes; when
        its coordinator goes away it subscribes again elsewhere (a status may repeat)."""
        request = fleet_pb2.WatchRequest(job_id=job_id, interval_s=interval)
        last = None

        def ended_early() -> bool:  # a coordinator that stops ends its streams
            return last is None or not JobState(last.state).finished

        stream = self._stream(lambda s, left: s.jobs.Watch(request, timeout=left),
                              ended_early, _deadline(timeout))
        try:
            for last in stream:
                yield last
        finally:
            stream.close()

    def results(self, job_id: str, after_seq: int = 0, follow: bool = False,
                timeout: float | None = None, include_pending: bool = False
                ) -> Iterator[Record]:
        """The job's results after ``after_seq`` in commit order; with ``follow``, until
        the job finishes. Resumed after the last one delivered on another coordinator
        when the one serving them goes away; provisional records are not repeated."""
        deadline = _deadline(timeout)
        last, provisional = after_seq, set()

        def fetch(follow_now: bool, pending: bool):
            return lambda s, left: s.jobs.FetchResults(fleet_pb2.FetchResultsRequest(
                job_id=job_id, after_seq=last, follow=follow_now, include_pending=pending),
                timeout=left)

        def unfinished() -> bool:
            # A follow stream ends when the job finishes or its coordinator stops: ask.
            return not JobState(self.get(job_id).state).finished

        passes = [(fetch(follow, include_pending), unfinished if follow else _over)]
        if follow:  # the job finished: what came in as that stream ended
            passes.append((fetch(False, False), _over))
        for open_call, ended_early in passes:
            stream = self._stream(open_call, ended_early, deadline)
            try:
                for r in stream:
                    if r.provisional:
                        if r.id in provisional:
                            continue
                        provisional.add(r.id)
                    else:
                        last = r.seq
                    yield _record(r)
            finally:
                stream.close()


def _over() -> bool:
    return False


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout
