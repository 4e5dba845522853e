"""Circuit breaker state machine, driven by a fake clock (plain floats)."""

from __future__ import annotations

import threading

import pytest

from coordinator.cascade.breaker import BreakerState, CircuitBreaker


def fail(breaker: CircuitBreaker, times: int, now: float) -> None:
    for _ in range(times):
        assert breaker.allow(now)
        breaker.record_failure(now)


def test_consecutive_failures_open_it():
    b = CircuitBreaker(failure_threshold=3, reset_timeout_s=5.0)
    fail(b, 2, now=0.0)
    assert b.state is BreakerState.CLOSED and b.consecutive_failures == 2
    assert b.allow(0.1)
    b.record_success(0.1)  # a success resets the count
    fail(b, 2, now=0.2)
    assert b.state is BreakerState.CLOSED
    fail(b, 1, now=0.3)
    assert b.state is BreakerState.OPEN
    assert not b.allow(0.3) and not b.allow(5.29)
    assert b.transitions == {("closed", "open"): 1}


def test_half_open_success_closes_it():
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=5.0)
    fail(b, 1, now=10.0)
    assert b.state == "open"
    assert b.allow(15.0)  # timeout elapsed: one trial
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow(15.1)  # half_open_max = 1
    b.record_success(15.2)
    assert b.state is BreakerState.CLOSED and b.consecutive_failures == 0
    assert b.allow(15.3) and b.allow(15.3)
    assert b.transitions == {("closed", "open"): 1, ("open", "half_open"): 1,
                             ("half_open", "closed"): 1}
    assert b.transition_count == 3


def test_half_open_failure_reopens_and_restarts_the_timeout():
    b = CircuitBreaker(failure_threshold=2, reset_timeout_s=5.0)
    fail(b, 2, now=0.0)
    assert b.allow(5.0)
    b.record_failure(6.0)
    assert b.state is BreakerState.OPEN
    assert not b.allow(10.9)  # the timeout counts from 6.0, not 0.0
    assert b.allow(11.0)
    assert b.transitions[("half_open", "open")] == 1


def test_half_open_max_trials():
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, half_open_max=3)
    fail(b, 1, now=0.0)
    assert [b.allow(1.0) for _ in range(5)] == [True, True, True, False, False]
    b.record_success(1.1)  # one success is enough to close it
    assert b.state is BreakerState.CLOSED


def test_lost_trials_do_not_wedge_it():
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=2.0)
    fail(b, 1, now=0.0)
    assert b.allow(2.0)  # this trial's result never arrives
    assert not b.allow(3.9)
    assert b.allow(4.0)  # a new round after another timeout
    assert b.state is BreakerState.HALF_OPEN


def test_late_results_while_open_are_ignored():
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=5.0)
    fail(b, 1, now=0.0)
    b.record_failure(4.0)  # from a call allowed before it opened
    b.record_success(4.5)
    assert b.state is BreakerState.OPEN
    assert b.allow(5.0)  # timeout still counted from 0.0


def test_clock_going_backwards_counts_as_no_time():
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=5.0)
    fail(b, 1, now=100.0)
    assert not b.allow(99.0)
    assert b.state is BreakerState.OPEN


def test_zero_timeout_goes_straight_to_half_open():
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=0.0)
    fail(b, 1, now=0.0)
    assert b.allow(0.0) and b.state is BreakerState.HALF_OPEN


@pytest.mark.parametrize("kwargs,name", [
    ({"failure_threshold": 0}, "failure_threshold"),
    ({"failure_threshold": 2.5}, "failure_threshold"),
    ({"half_open_max": 0}, "half_open_max"),
    ({"reset_timeout_s": -1.0}, "reset_timeout_s"),
    ({"reset_timeout_s": float("inf")}, "reset_timeout_s"),
])
def test_arguments_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        CircuitBreaker(**kwargs)


def test_concurrent_trials_respect_half_open_max():
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, half_open_max=4)
    fail(b, 1, now=0.0)
    granted = []
    barrier = threading.Barrier(16)

    def worker():
        barrier.wait()
        granted.append(sum(b.allow(1.5) for _ in range(50)))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 4
