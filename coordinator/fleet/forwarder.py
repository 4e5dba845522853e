"""Run one call on a fleet node: admission, per-node accounting, one retry elsewhere.

Both doors to the nodes use it: the online inference front (``Forwarder.forward``: pick a
node, call it, retry once on another node; ``forward_async`` does the same on an event
loop) and the job dispatcher (``Forwarder.call``: a shard on the node that leased it).
The call itself is a function the transport layer supplies; it raises
``edgeshard.errors.PeerStatusError`` when the node answers with an error status, so
nothing here imports gRPC.

Failure behaviour: a node that answers UNAVAILABLE is marked suspect (no new work until a
health check passes); UNAVAILABLE or DEADLINE_EXCEEDED is retried once on another node
while at least ``MIN_RETRY_S`` of the caller's deadline remains; every other status
(INVALID_ARGUMENT above all) goes back to the caller unchanged and is never retried. While
every node is at capacity an online call waits for room, within its deadline, and only
then is refused with ``FleetSaturatedError``; at most ``max_queued`` calls wait (one more
is refused at once), and when ``max_in_flight`` online calls are already in the
coordinator, a new one is refused at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from coordinator.errors import FleetSaturatedError
from coordinator.fleet.registry import NodeRecord, Registry
from coordinator.fleet.router import Router
from edgeshard.errors import PeerStatusError
from edgeshard.limits import ConcurrencyLimit

log = logging.getLogger(__name__)

T = TypeVar("T")

# call(node, timeout_s) -> the node's answer; raises PeerStatusError on an error status.
NodeCall = Callable[[NodeRecord, float], T]
# The same as a coroutine function, for the event loop (``Forwarder.forward_async``).
AsyncNodeCall = Callable[[NodeRecord, float], Awaitable[T]]
# run_blocking(fn, *args) -> awaitable of fn(*args) run on a thread (loop.run_in_executor).
RunBlocking = Callable[..., Awaitable]

MIN_RETRY_S = 0.005  # below this much time left, a retry could not finish anyway


@dataclass(frozen=True)
class Forwarded(Generic[T]):
    """A call's answer, the node that gave it, and whether it took a retry."""

    answer: T
    node: NodeRecord
    retried: bool


class Forwarder:
    """Runs calls on nodes and keeps the registry's per-node load and latency current.

    ``on_result(node_id, status_name, seconds)`` is told the outcome of every online
    attempt (a metrics hook).
    """

    def __init__(self, registry: Registry, router: Router, max_in_flight: int,
                 on_result: Callable[[str, str, float], None] | None = None,
                 max_queued: int = 32):
        self.registry = registry
        self.router = router
        # Requests waiting for room (a place is taken with try_enter: a full queue re-raises
        # the router's refusal). None: no request waits.
        self.waiting = ConcurrencyLimit(max_queued) if max_queued > 0 else None
        self.admission = ConcurrencyLimit(max_in_flight, lambda limit: FleetSaturatedError(
            f"coordinator at its limit of {limit} requests in flight; retry later"))
        self.on_result = on_result

    def call(self, node: NodeRecord, call: NodeCall[T], timeout: float, items: int = 0,
             shard: bool = False) -> T:
        """Run ``call`` on ``node`` with the node's outstanding count raised meanwhile.

        A success records the call's latency (and ``items``, ``shard`` in the node's
        counters); a ``PeerStatusError`` of UNAVAILABLE marks the node suspect. Any
        exception propagates unchanged.
        """
        started = self._begin(node)
        try:
            answer = call(node, timeout)
        except BaseException as exc:
            self._failed(node, exc)
            raise
        self.registry.release(node.address, time.monotonic() - started, items=items,
                              shard=shard)
        return answer

    def forward(self, model: str, version: str, routing_key: str, timeout: float,
                call: NodeCall[T]) -> Forwarded[T]:
        """Route an online call for ``model`` to a node and run it there, within
        ``timeout`` seconds overall; one retry on another node for a retryable status.

        Raises ``FleetSaturatedError`` (admission, or every node at capacity until the
        deadline),
        ``ModelNotServedError`` / ``NoNodeAvailableError`` (from the router) or the
        node's ``PeerStatusError``.
        """
        deadline = time.monotonic() + timeout
        tried: set[str] = set()
        with self.admission:
            while True:
                node = self._choose(model, version, routing_key, frozenset(tried),
                                    deadline - MIN_RETRY_S)
                started = time.monotonic()
                try:
                    answer = self.call(node, call, deadline - started)
                except PeerStatusError as exc:
                    if self._retry(node, exc, started, tried, deadline):
                        continue
                    raise
                self._observe(node.node_id, "OK", started)
                return Forwarded(answer, node, retried=bool(tried))

    async def forward_async(self, model: str, version: str, routing_key: str,
                            timeout: float, call: AsyncNodeCall[T],
                            run_blocking: RunBlocking) -> Forwarded[T]:
        """``forward`` for a coroutine on an event loop, with a coroutine ``call``: the
        same admission, choice, retry and accounting, and nothing blocks the loop. Only
        waiting for room in a full fleet takes a thread, through ``run_blocking(fn,
        *args)`` (e.g. ``loop.run_in_executor``). A cancelled call releases its node."""
        deadline = time.monotonic() + timeout
        tried: set[str] = set()
        with self.admission:
            while True:
                try:
                    node = self.router.choose(model, version, routing_key, frozenset(tried))
                except FleetSaturatedError:
                    node = await run_blocking(self._choose, model, version, routing_key,
                                              frozenset(tried), deadline - MIN_RETRY_S)
                started = self._begin(node)
                try:
                    answer = await call(node, deadline - started)
                except BaseException as exc:
                    self._failed(node, exc)
                    if isinstance(exc, PeerStatusError) and self._retry(node, exc, started,
                                                                        tried, deadline):
                        continue
                    raise
                self.registry.release(node.address, time.monotonic() - started)
                self._observe(node.node_id, "OK", started)
                return Forwarded(answer, node, retried=bool(tried))

    def _begin(self, node: NodeRecord) -> float:
        """A call to ``node`` starts: its outstanding count is raised; the start time."""
        self.registry.acquire(node.address)
        return time.monotonic()

    def _failed(self, node: NodeRecord, exc: BaseException) -> None:
        """A call to ``node`` failed: release it uncounted; UNAVAILABLE makes it suspect."""
        self.registry.release(node.address, None)
        if isinstance(exc, PeerStatusError) and exc.status == "UNAVAILABLE":
            self.registry.probe_failed(node.address)

    def _retry(self, node: NodeRecord, exc: PeerStatusError, started: float,
               tried: set[str], deadline: float) -> bool:
        """Record a node's error; True when the call goes to another node (a retryable
        status, no retry yet, time left), with ``node`` added to ``tried``."""
        self._observe(node.node_id, exc.status, started)
        if exc.retryable and not tried and deadline - time.monotonic() > MIN_RETRY_S:
            log.info("retrying on another node: %s answered %s", node.node_id, exc.status)
            tried.add(node.address)
            return True
        return False

    def _choose(self, model: str, version: str, routing_key: str, tried: frozenset[str],
                deadline: float) -> NodeRecord:
        """The router's choice; a full fleet is waited on (until ``deadline``) only while
        fewer than ``max_queued`` requests wait already, else refused at once (with the
        router's own refusal)."""
        try:
            return self.router.choose(model, version, routing_key, tried)
        except FleetSaturatedError:
            if self.waiting is None or not self.waiting.try_enter():
                raise
        try:
            return self.router.choose(model, version, routing_key, tried, deadline=deadline)
        finally:
            self.waiting.exit()

    @property
    def queued(self) -> int:
        """Online requests waiting for room right now."""
        return self.waiting.current if self.waiting is not None else 0

    def _observe(self, node_id: str, status: str, started: float) -> None:
        if self.on_result is not None:
            self.on_result(node_id, status, time.monotonic() - started)
