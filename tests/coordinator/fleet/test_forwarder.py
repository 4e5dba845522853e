"""Forwarder: admission, routing, one retry elsewhere and per-node accounting.

No transport: the node call is a plain function that answers or raises
``PeerStatusError`` as a node's client would; the Registry and Router are real.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from coordinator.errors import FleetSaturatedError, NoNodeAvailableError
from coordinator.fleet.forwarder import Forwarded, Forwarder
from coordinator.fleet.registry import LIVE, SUSPECT, NodeRecord, Registry
from coordinator.fleet.router import Router
from edgeshard.errors import PeerStatusError

MODELS = {"m": ("1",)}


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> Registry:
    reg = Registry(suspect_after=30.0, dead_after=60.0, clock=Clock())
    for name, address in (("node-a", "a:1"), ("node-b", "b:1")):
        reg.register(name, address, MODELS, capacity=8)
        reg.probe_ok(address)
    return reg


@pytest.fixture
def seen() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def forwarder(registry, seen) -> Forwarder:
    return Forwarder(registry, Router(registry, rng=random.Random(7)), max_in_flight=4,
                     on_result=lambda node, status, _seconds: seen.append((node, status)))


@pytest.fixture(params=["sync", "async"])
def route(request):
    """``Forwarder.forward``, or ``forward_async`` driven on an event loop (the call made a
    coroutine, waiting for room on the loop's executor): both must behave alike."""
    if request.param == "sync":
        return lambda fwd, *args, **kwargs: fwd.forward(*args, **kwargs)

    def drive(fwd, model, version, routing_key, timeout, call):
        async def call_async(node, seconds):
            return call(node, seconds)

        async def main():
            loop = asyncio.get_running_loop()
            return await fwd.forward_async(model, version, routing_key, timeout, call_async,
                                           lambda fn, *args: loop.run_in_executor(None, fn,
                                                                                  *args))
        return asyncio.run(main())

    return drive


class FailFirst:
    """A node call that fails its first ``failures`` calls with ``status``, then answers."""

    def __init__(self, status: str, failures: int = 1):
        self.status = status
        self.failures = failures
        self.calls: list[str] = []

    def __call__(self, node: NodeRecord, timeout: float) -> str:
        assert timeout > 0
        self.calls.append(node.address)
        if len(self.calls) <= self.failures:
            raise PeerStatusError(self.status, f"{node.node_id} says {self.status}")
        return f"answer from {node.node_id}"


def outstanding(registry: Registry) -> dict[str, int]:
    return {r.address: r.outstanding for r in registry.snapshot()}


@pytest.mark.parametrize("status", ["UNAVAILABLE", "DEADLINE_EXCEEDED"])
def test_retryable_status_is_retried_once_on_another_node(forwarder, registry, seen, status, route):
    call = FailFirst(status)
    out = route(forwarder, "m", "", "", timeout=5.0, call=call)
    assert isinstance(out, Forwarded)
    assert len(call.calls) == 2
    first, second = call.calls
    assert first != second
    assert out.retried is True
    assert out.node.address == second
    assert out.answer == f"answer from {out.node.node_id}"
    first_id = registry.get(first).node_id
    assert seen == [(first_id, status), (out.node.node_id, "OK")]
    assert outstanding(registry) == {"a:1": 0, "b:1": 0}


def test_first_try_success_is_not_marked_retried(forwarder, registry, seen, route):
    call = FailFirst("UNAVAILABLE", failures=0)
    out = route(forwarder, "m", "1", "", timeout=5.0, call=call)
    assert out.retried is False
    assert call.calls == [out.node.address]
    assert seen == [(out.node.node_id, "OK")]
    assert all(r.state == LIVE for r in registry.snapshot())


def test_invalid_argument_goes_back_to_the_caller_without_retry(forwarder, registry, seen, route):
    call = FailFirst("INVALID_ARGUMENT")
    with pytest.raises(PeerStatusError) as info:
        route(forwarder, "m", "", "", timeout=5.0, call=call)
    assert info.value.status == "INVALID_ARGUMENT"
    assert not info.value.retryable
    assert len(call.calls) == 1
    # the caller's mistake is not the node's: it stays live
    assert registry.get(call.calls[0]).state == LIVE
    assert seen == [(registry.get(call.calls[0]).node_id, "INVALID_ARGUMENT")]
    assert outstanding(registry) == {"a:1": 0, "b:1": 0}


def test_second_retryable_failure_propagates(forwarder, registry, seen, route):
    call = FailFirst("DEADLINE_EXCEEDED", failures=2)
    with pytest.raises(PeerStatusError) as info:
        route(forwarder, "m", "", "", timeout=5.0, call=call)
    assert info.value.status == "DEADLINE_EXCEEDED"
    assert len(call.calls) == 2 and len(set(call.calls)) == 2  # one retry, never a third try
    assert [status for _, status in seen] == ["DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"]
    assert outstanding(registry) == {"a:1": 0, "b:1": 0}


def test_unavailable_marks_the_node_suspect(forwarder, registry, route):
    call = FailFirst("UNAVAILABLE")
    out = route(forwarder, "m", "", "", timeout=5.0, call=call)
    failed = call.calls[0]
    assert registry.get(failed).state == SUSPECT
    assert registry.get(out.node.address).state == LIVE
    # the suspect node gets no new work until a health check passes
    assert [r.address for r in registry.routable("m")] == [out.node.address]
    later = FailFirst("UNAVAILABLE", failures=0)
    for _ in range(5):
        route(forwarder, "m", "", "", timeout=5.0, call=later)
    assert set(later.calls) == {out.node.address}
    registry.probe_ok(failed)
    assert registry.get(failed).state == LIVE


@pytest.mark.parametrize("status", ["INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND"])
def test_other_statuses_do_not_mark_the_node_suspect(forwarder, registry, status):
    node = registry.get("a:1")
    with pytest.raises(PeerStatusError):
        forwarder.call(node, FailFirst(status), timeout=1.0)
    assert registry.get("a:1").state == LIVE


def test_unavailable_on_the_only_node_leaves_no_node_for_the_retry(route):
    """With one node the retry finds nobody: the router's NoNodeAvailableError reaches the
    caller (the node is suspect by then)."""
    reg = Registry(suspect_after=30.0, dead_after=60.0, clock=Clock())
    reg.register("solo", "s:1", MODELS, capacity=4)
    reg.probe_ok("s:1")
    fwd = Forwarder(reg, Router(reg), max_in_flight=2)
    call = FailFirst("UNAVAILABLE")
    with pytest.raises(NoNodeAvailableError, match="already failed"):
        route(fwd, "m", "", "", timeout=5.0, call=call)
    assert call.calls == ["s:1"]
    assert reg.get("s:1").state == SUSPECT and reg.get("s:1").outstanding == 0


def test_call_counts_latency_items_and_shards_on_success(forwarder, registry):
    node = registry.get("a:1")
    registry.clock.now = 1234.0
    during = []

    def call(target: NodeRecord, timeout: float) -> str:
        during.append(registry.get(target.address).outstanding)
        time.sleep(0.002)  # some latency to record
        return "ok"

    assert forwarder.call(node, call, timeout=1.0, items=5, shard=True) == "ok"
    assert during == [1]
    after = registry.get("a:1")
    assert after.outstanding == 0
    assert after.items_done == 5 and after.shards_done == 1
    assert after.latency.value is not None and after.latency_ms > 0
    assert after.last_heard == 1234.0
    forwarder.call(node, call, timeout=1.0, items=3)
    after = registry.get("a:1")
    assert after.items_done == 8 and after.shards_done == 1  # shard=False adds no shard
    assert registry.get("b:1").items_done == 0


@pytest.mark.parametrize("error", [PeerStatusError("UNAVAILABLE", "down"),
                                   PeerStatusError("INVALID_ARGUMENT", "bad input"),
                                   RuntimeError("bug in the client")])
def test_call_failure_releases_the_node_without_counting(forwarder, registry, error):
    node = registry.get("a:1")

    def call(target: NodeRecord, timeout: float) -> str:
        assert registry.get(target.address).outstanding == 1
        raise error

    with pytest.raises(type(error)) as info:
        forwarder.call(node, call, timeout=1.0, items=5, shard=True)
    assert info.value is error  # propagates unchanged
    after = registry.get("a:1")
    assert after.outstanding == 0
    assert after.items_done == 0 and after.shards_done == 0
    assert after.latency.value is None
    assert after.state == (SUSPECT if getattr(error, "status", "") == "UNAVAILABLE" else LIVE)


def test_outstanding_returns_to_zero_after_forward_success_and_failure(forwarder, registry, route):
    route(forwarder, "m", "", "", timeout=5.0, call=FailFirst("UNAVAILABLE", failures=0))
    assert outstanding(registry) == {"a:1": 0, "b:1": 0}
    with pytest.raises(PeerStatusError):
        route(forwarder, "m", "", "", timeout=5.0, call=FailFirst("INVALID_ARGUMENT"))
    assert outstanding(registry) == {"a:1": 0, "b:1": 0}
    with pytest.raises(KeyError):
        route(forwarder, "m", "", "", timeout=5.0,
                          call=lambda node, timeout: {}["missing"])
    assert outstanding(registry) == {"a:1": 0, "b:1": 0}
    assert forwarder.admission.current == 0


def test_admission_refuses_at_max_in_flight(registry, seen, route):
    fwd = Forwarder(registry, Router(registry), max_in_flight=1,
                    on_result=lambda node, status, _s: seen.append((node, status)))
    inner: list[BaseException] = []

    def call(node: NodeRecord, timeout: float) -> str:
        assert fwd.admission.current == 1
        try:  # a second online request while this one is in flight
            fwd.forward("m", "", "", timeout=1.0,
                        call=FailFirst("UNAVAILABLE", failures=0))  # sync: same admission
        except FleetSaturatedError as exc:
            inner.append(exc)
        return "outer"

    out = route(fwd, "m", "", "", timeout=5.0, call=call)
    assert out.answer == "outer"
    assert len(inner) == 1 and "limit of 1" in str(inner[0])
    assert seen == [(out.node.node_id, "OK")]  # the refused request reached no node
    assert fwd.admission.current == 0
    # the slot is free again
    assert route(fwd, "m", "", "", timeout=1.0,
                       call=FailFirst("UNAVAILABLE", failures=0)).answer.startswith("answer")


def test_admission_slot_is_released_when_the_call_fails(registry, route):
    fwd = Forwarder(registry, Router(registry), max_in_flight=1)
    for _ in range(3):
        with pytest.raises(PeerStatusError):
            route(fwd, "m", "", "", timeout=1.0, call=FailFirst("INVALID_ARGUMENT"))
    assert fwd.admission.current == 0


def test_no_retry_when_the_deadline_is_spent(forwarder, registry, seen, route):
    def slow_unavailable(node: NodeRecord, timeout: float) -> str:
        time.sleep(timeout + 0.01)  # used up the caller's whole deadline
        raise PeerStatusError("UNAVAILABLE", "down")

    with pytest.raises(PeerStatusError):
        route(forwarder, "m", "", "", timeout=0.02, call=slow_unavailable)
    assert len(seen) == 1  # no second attempt after the deadline


# -- a full fleet: wait for room, within the deadline, in a bounded queue ------------------


@pytest.fixture
def one_slot() -> Registry:
    reg = Registry(suspect_after=30.0, dead_after=60.0, clock=Clock())
    reg.register("node-a", "a:1", MODELS, capacity=1)
    reg.probe_ok("a:1")
    return reg


def test_a_request_waits_for_a_slot_and_gets_it_when_one_frees(one_slot, route):
    import threading

    forwarder = Forwarder(one_slot, Router(one_slot), max_in_flight=8)
    one_slot.acquire("a:1")  # the node's one slot is taken
    threading.Timer(0.2, one_slot.release, ("a:1", 0.01)).start()
    done = route(forwarder, "m", "", "", 5.0, lambda node, timeout: node.node_id)
    assert done.answer == "node-a" and forwarder.queued == 0


def test_a_request_is_refused_when_no_slot_frees_within_its_deadline(one_slot, route):
    forwarder = Forwarder(one_slot, Router(one_slot), max_in_flight=8)
    one_slot.acquire("a:1")
    with pytest.raises(FleetSaturatedError) as err:
        route(forwarder, "m", "", "", 0.3, lambda node, timeout: "never")
    assert "at capacity for as long as the request could wait" in str(err.value)
    assert forwarder.queued == 0 and forwarder.admission.current == 0


def test_the_wait_queue_is_bounded(one_slot, route):
    forwarder = Forwarder(one_slot, Router(one_slot), max_in_flight=8, max_queued=0)
    one_slot.acquire("a:1")
    with pytest.raises(FleetSaturatedError) as err:
        route(forwarder, "m", "", "", 5.0, lambda node, timeout: "never")
    assert "could wait" not in str(err.value)  # refused at once: no room in the queue


def test_a_cancelled_async_call_releases_its_node_and_admission(forwarder, registry, seen):
    """The caller of an online request went away: the awaited node call is cancelled."""
    async def main():
        started = asyncio.Event()

        async def hang(node: NodeRecord, timeout: float) -> str:
            started.set()
            await asyncio.sleep(60)
            return "never"

        task = asyncio.create_task(forwarder.forward_async(
            "m", "", "", 5.0, hang, lambda fn, *args: asyncio.to_thread(fn, *args)))
        await started.wait()
        assert sum(outstanding(registry).values()) == 1 and forwarder.admission.current == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert outstanding(registry) == {"a:1": 0, "b:1": 0}
    assert forwarder.admission.current == 0
    assert seen == []  # no outcome to count: neither an answer nor a node's error
    assert all(r.state == LIVE for r in registry.snapshot())
