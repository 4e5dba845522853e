"""Token bucket (with a Hypothesis property for its rate bound) and cost meter."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.cascade.budget import CostMeter, TokenBucket


def test_starts_full_and_grants_partially():
    b = TokenBucket(rate_per_s=2.0, burst=5)
    assert b.take(3, now=0.0) == 3
    assert b.take(4, now=0.0) == 2  # partial grant: only 2 left
    assert b.take(1, now=0.0) == 0


def test_refills_continuously_up_to_burst():
    b = TokenBucket(rate_per_s=2.0, burst=5)
    assert b.take(5, now=10.0) == 5
    assert b.take(5, now=10.25) == 0  # 0.5 token: not a whole one
    assert b.take(5, now=10.5) == 1  # 0.5 + 0.5
    assert b.available(11.0) == pytest.approx(1.0)
    assert b.take(100, now=1000.0) == 5  # capped at burst


def test_zero_rate_is_only_the_burst():
    b = TokenBucket(rate_per_s=0.0, burst=3)
    assert b.take(2, 0.0) == 2 and b.take(2, 1e9) == 1 and b.take(1, 2e9) == 0


@pytest.mark.parametrize("rate", [None, math.inf])
def test_unlimited(rate):
    b = TokenBucket(rate_per_s=rate, burst=1)
    assert b.unlimited and b.take(10**9, 0.0) == 10**9 and b.available(0.0) == math.inf


def test_clock_going_backwards_does_not_refill():
    b = TokenBucket(rate_per_s=1.0, burst=2)
    assert b.take(2, now=10.0) == 2
    assert b.take(1, now=5.0) == 0
    assert b.take(1, now=10.5) == 0
    assert b.take(1, now=11.0) == 1


@pytest.mark.parametrize("kwargs,name", [
    ({"rate_per_s": -1.0, "burst": 1}, "rate_per_s"),
    ({"rate_per_s": float("nan"), "burst": 1}, "rate_per_s"),
    ({"rate_per_s": 1.0, "burst": 0.5}, "burst"),
    ({"rate_per_s": 1.0, "burst": math.inf}, "burst"),
])
def test_bucket_arguments(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        TokenBucket(**kwargs)
    with pytest.raises(ValueError, match=r"^n: "):
        TokenBucket(1.0, 1).take(-1, 0.0)
    with pytest.raises(ValueError, match=r"^now: "):
        TokenBucket(1.0, 1).take(1, float("nan"))


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(0.0, 1000.0, allow_nan=False),
    burst=st.integers(1, 50),
    steps=st.lists(st.tuples(st.floats(0.0, 10.0, allow_nan=False), st.integers(0, 100)),
                   min_size=1, max_size=60),
)
def test_granted_never_exceeds_burst_plus_rate_times_elapsed(rate, burst, steps):
    b = TokenBucket(rate, burst)
    now, start, total = 0.0, 0.0, 0
    for dt, n in steps:
        now += dt
        granted = b.take(n, now)
        assert 0 <= granted <= n
        total += granted
    bound = burst + rate * (now - start)
    assert total <= bound + 1e-9 * max(1.0, bound)


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(0.1, 100.0), burst=st.integers(1, 20), n=st.integers(1, 20))
def test_a_full_bucket_grants_min_of_n_and_burst(rate, burst, n):
    assert TokenBucket(rate, burst).take(n, 123.0) == min(n, burst)


def test_cost_meter():
    m = CostMeter(cost_per_call=0.01, cost_per_item=0.002)
    assert m.record(items=10) == pytest.approx(0.03)
    m.record(items=5, calls=2)
    assert (m.calls, m.items) == (3, 15)
    assert m.cost == pytest.approx(3 * 0.01 + 15 * 0.002)
    assert m.snapshot() == {"calls": 3, "items": 15, "cost": pytest.approx(0.06)}
    with pytest.raises(ValueError, match=r"^cost_per_item: "):
        CostMeter(cost_per_item=-1.0)
    with pytest.raises(ValueError, match=r"^items: "):
        m.record(items=-1)
