"""CloudTier.ask: breaker, token-bucket budget, concurrency, batches, partial answers.

No transport: the cloud is a plain function returning (labels, confidences) or raising;
the breaker, budget and cost meter are the real ones, driven by an injected clock.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.cascade.breaker import BreakerState, CircuitBreaker
from coordinator.cascade.budget import CostMeter, TokenBucket
from coordinator.cascade.cloud import CloudAnswer, CloudTier
from edgeshard.errors import PeerStatusError


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeCloud:
    """Labels each item with its first value * 10; fails the calls listed in ``fail_on``
    (1-based call numbers) or every call when ``down``."""

    def __init__(self, fail_on: tuple[int, ...] = (), down: bool = False):
        self.fail_on = set(fail_on)
        self.down = down
        self.batches: list[np.ndarray] = []
        self.models: list[str] = []

    def __call__(self, cloud_model: str, items: np.ndarray, timeout: float):
        assert timeout > 0
        self.batches.append(items.copy())
        self.models.append(cloud_model)
        if self.down or len(self.batches) in self.fail_on:
            raise ConnectionError("cloud unreachable")
        labels = (items[:, 0] * 10).astype(np.int64)
        return labels, np.full(len(items), 0.99, dtype=np.float32)

    @property
    def items_sent(self) -> int:
        return sum(len(b) for b in self.batches)


def items(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32).reshape(n, 1).repeat(3, axis=1)


def make_tier(transport, *, clock=None, rate=None, burst=1000.0, failures=3, reset_s=10.0,
              max_batch=32, concurrency=4, cost=None, calls=None) -> CloudTier:
    clock = clock or Clock()
    return CloudTier(transport, CircuitBreaker(failures, reset_s), TokenBucket(rate, burst),
                     cost or CostMeter(), concurrency=concurrency, max_batch=max_batch,
                     on_call=None if calls is None else
                     (lambda model, outcome, n, _s: calls.append((model, outcome, n))),
                     clock=clock)


def test_answers_every_item_within_budget():
    cloud = FakeCloud()
    tier = make_tier(cloud)
    answer = tier.ask("big", items(5), timeout=2.0)
    assert isinstance(answer, CloudAnswer)
    assert answer.answered == 5 and answer.reason == ""
    assert answer.labels.tolist() == [0, 10, 20, 30, 40]
    assert answer.labels.dtype == np.int64 and answer.confidences.dtype == np.float32
    assert np.allclose(answer.confidences, 0.99)
    assert cloud.models == ["big"]


def test_partial_answer_when_the_budget_grants_fewer_tokens_than_items():
    cloud = FakeCloud()
    tier = make_tier(cloud, rate=0.0, burst=3)
    answer = tier.ask("big", items(5), timeout=2.0)
    assert answer.answered == 3 and answer.reason == "budget"
    assert answer.labels.tolist() == [0, 10, 20]  # the leading items
    assert len(answer.confidences) == 3
    assert cloud.items_sent == 3  # items beyond the grant are never sent


def test_spent_budget_refuses_without_calling_the_transport():
    cloud = FakeCloud()
    tier = make_tier(cloud, rate=0.0, burst=2)
    assert tier.ask("big", items(2), timeout=2.0).answered == 2
    answer = tier.ask("big", items(4), timeout=2.0)
    assert answer.answered == 0 and answer.reason == "budget"
    assert len(answer.labels) == 0 and len(answer.confidences) == 0
    assert len(cloud.batches) == 1  # only the first ask reached the cloud
    assert tier.breaker.state is BreakerState.CLOSED  # a spent budget is not a failure


def test_budget_refills_with_the_injected_clock():
    clock = Clock(0.0)
    cloud = FakeCloud()
    tier = make_tier(cloud, clock=clock, rate=2.0, burst=4)
    assert tier.ask("big", items(4), timeout=2.0).answered == 4
    assert tier.ask("big", items(4), timeout=2.0).reason == "budget"
    clock.now = 1.0  # two more tokens
    answer = tier.ask("big", items(4), timeout=2.0)
    assert answer.answered == 2 and answer.reason == "budget"
    assert cloud.items_sent == 6


def test_transport_exception_stops_later_batches():
    cloud = FakeCloud(fail_on=(2,))
    calls: list = []
    tier = make_tier(cloud, max_batch=2, calls=calls)
    answer = tier.ask("big", items(7), timeout=2.0)
    assert answer.answered == 2
    assert answer.reason.startswith("error:") and "cloud unreachable" in answer.reason
    assert answer.labels.tolist() == [0, 10]
    assert len(cloud.batches) == 2  # batches 3 and 4 were never sent
    assert tier.breaker.consecutive_failures == 1
    assert calls == [("big", "answered", 2), ("big", "failed", 2)]


def test_consecutive_failures_open_the_breaker():
    cloud = FakeCloud(down=True)
    tier = make_tier(cloud, failures=3)
    for _ in range(3):
        answer = tier.ask("big", items(2), timeout=2.0)
        assert answer.answered == 0 and answer.reason.startswith("error:")
    assert tier.breaker.state is BreakerState.OPEN
    sent = len(cloud.batches)
    assert sent == 3
    answer = tier.ask("big", items(2), timeout=2.0)
    assert answer.answered == 0 and answer.reason == "breaker_open"
    assert len(cloud.batches) == sent  # refused without a call


def test_a_success_resets_the_consecutive_failure_count():
    cloud = FakeCloud(fail_on=(1, 2, 4, 5))
    tier = make_tier(cloud, failures=3)
    for _ in range(5):
        tier.ask("big", items(1), timeout=2.0)
    assert tier.breaker.state is BreakerState.CLOSED
    assert tier.breaker.consecutive_failures == 2


def test_breaker_half_open_recovery_with_an_injected_clock():
    clock = Clock(0.0)
    cloud = FakeCloud(down=True)
    tier = make_tier(cloud, clock=clock, failures=2, reset_s=10.0)
    tier.ask("big", items(1), timeout=2.0)
    tier.ask("big", items(1), timeout=2.0)
    assert tier.breaker.state is BreakerState.OPEN
    clock.now = 9.0
    assert tier.ask("big", items(1), timeout=2.0).reason == "breaker_open"
    assert len(cloud.batches) == 2

    # after the reset timeout one trial goes through; it fails and re-opens the breaker
    clock.now = 10.0
    answer = tier.ask("big", items(1), timeout=2.0)
    assert answer.reason.startswith("error:") and len(cloud.batches) == 3
    assert tier.breaker.state is BreakerState.OPEN
    clock.now = 19.0  # the timeout restarted at 10
    assert tier.ask("big", items(1), timeout=2.0).reason == "breaker_open"
    assert len(cloud.batches) == 3

    # the cloud is back: the next trial succeeds and closes the breaker
    cloud.down = False
    clock.now = 20.0
    answer = tier.ask("big", items(3), timeout=2.0)
    assert answer.answered == 3 and answer.reason == ""
    assert tier.breaker.state is BreakerState.CLOSED
    assert tier.ask("big", items(2), timeout=2.0).answered == 2
    assert ("open", "half_open") in tier.breaker.transitions
    assert tier.breaker.transitions[("half_open", "closed")] == 1


def test_batches_of_at_most_max_batch_in_item_order():
    cloud = FakeCloud()
    tier = make_tier(cloud, max_batch=3)
    answer = tier.ask("big", items(8), timeout=2.0)
    assert [len(b) for b in cloud.batches] == [3, 3, 2]
    assert np.array_equal(np.concatenate(cloud.batches), items(8))
    assert answer.answered == 8
    assert answer.labels.tolist() == [0, 10, 20, 30, 40, 50, 60, 70]


def test_budget_grant_is_split_into_batches():
    cloud = FakeCloud()
    tier = make_tier(cloud, max_batch=2, rate=0.0, burst=5)
    answer = tier.ask("big", items(9), timeout=2.0)
    assert [len(b) for b in cloud.batches] == [2, 2, 1]
    assert answer.answered == 5 and answer.reason == "budget"


def test_cost_meter_counts_calls_and_items():
    cost = CostMeter(cost_per_call=0.5, cost_per_item=0.1)
    cloud = FakeCloud(fail_on=(4,))
    tier = make_tier(cloud, max_batch=3, cost=cost)
    tier.ask("big", items(8), timeout=2.0)  # 3 calls, 8 items
    tier.ask("big", items(2), timeout=2.0)  # fails: not billed
    snap = cost.snapshot()
    assert snap["calls"] == 3 and snap["items"] == 8
    assert snap["cost"] == pytest.approx(3 * 0.5 + 8 * 0.1)
    assert cost.calls == 3 and cost.items == 8


def test_busy_when_every_slot_is_taken():
    inner: list[CloudAnswer] = []

    def transport(model, batch, timeout):
        # a second ask while this call holds the only slot
        inner.append(tier.ask(model, batch, timeout=0.01))
        return np.zeros(len(batch), dtype=np.int64), np.ones(len(batch), dtype=np.float32)

    tier = make_tier(transport, concurrency=1)
    outer = tier.ask("big", items(2), timeout=2.0)
    assert outer.answered == 2
    assert len(inner) == 1 and inner[0].answered == 0 and inner[0].reason == "busy"
    # the slot was released: the next outer ask gets it again (its inner ask does not)
    again = tier.ask("big", items(3), timeout=2.0)
    assert again.answered == 3 and again.reason == ""
    assert [a.reason for a in inner] == ["busy", "busy"]


def test_on_call_hook_sees_each_batch():
    calls: list = []
    tier = make_tier(FakeCloud(), max_batch=4, calls=calls)
    tier.ask("big", items(6), timeout=2.0)
    assert calls == [("big", "answered", 4), ("big", "answered", 2)]


def test_empty_request_is_answered_without_a_call():
    cloud = FakeCloud()
    answer = make_tier(cloud).ask("big", items(0), timeout=1.0)
    assert answer.answered == 0
    assert cloud.batches == []


def refusing(status: str):
    """A cloud that answers every call with ``status`` (a PeerStatusError)."""
    calls = []

    def call(cloud_model: str, batch: np.ndarray, timeout: float):
        calls.append(len(batch))
        raise PeerStatusError(status, "inputs[0].datatype: expected FP32")

    call.calls = calls
    return call


def test_a_refused_request_never_counts_against_the_breaker():
    tier = make_tier(refusing("INVALID_ARGUMENT"), failures=2, max_batch=4)
    for _ in range(5):
        answer = tier.ask("big", items(6), timeout=2.0)
        assert answer.answered == 0 and answer.refused == 4  # the first batch, then stop
        assert answer.reason.startswith("refused: INVALID_ARGUMENT")
        assert answer.refusal.status == "INVALID_ARGUMENT"
    assert tier.breaker.state == BreakerState.CLOSED


@pytest.mark.parametrize("status", ["UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL",
                                    "RESOURCE_EXHAUSTED", "NOT_FOUND"])
def test_server_faults_count_against_the_breaker(status):
    cloud = refusing(status)
    tier = make_tier(cloud, failures=2)
    for _ in range(2):
        answer = tier.ask("big", items(3), timeout=2.0)
        assert answer.refused == 0 and answer.reason.startswith(f"error: {status}")
    assert tier.breaker.state == BreakerState.OPEN
    assert tier.ask("big", items(3), timeout=2.0).reason == "breaker_open"
    assert len(cloud.calls) == 2
