"""Circuit breaker for the cloud tier: stop calling a failing backend, probe it, recover.

Time is an argument (``now``, seconds on a monotonic clock); no I/O, no threads. The one
non-pure part is an internal ``threading.Lock``: escalations come from many dispatcher
threads, and each call is a read-modify-write of the state, so every public method
holds the lock for its (constant, tiny) duration.

State machine:

* ``closed``: calls pass. ``failure_threshold`` *consecutive* failures open it; a success
  resets the count.
* ``open``: :meth:`allow` says False until ``reset_timeout_s`` has passed since it
  opened; the first :meth:`allow` after that moves it to ``half_open``.
* ``half_open``: up to ``half_open_max`` trial calls pass, the rest are refused. A
  success closes the breaker; a failure re-opens it and restarts the timeout.

Failure behaviour and edge cases:

* The open -> half_open move is lazy (it happens inside :meth:`allow`), so :attr:`state`
  reads ``open`` until someone asks.
* Results that arrive while ``open`` (from calls allowed before it opened) are ignored:
  a burst of late failures must not keep pushing the timeout back.
* A trial whose result never arrives would wedge a half-open breaker; so when the
  trials of a half-open round have not reported within ``reset_timeout_s``, the next
  :meth:`allow` starts a new round.
* ``now`` going slightly backwards (threads read the clock before taking the lock) is
  treated as no time passing.
* Bad constructor arguments raise ``ValueError`` whose message starts with the name.
"""

from __future__ import annotations

import enum
import math
import threading
from collections import Counter

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.StrEnum):
    """State of a :class:`CircuitBreaker`: ``closed``, ``open`` or ``half_open``."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a half-open probe (see module docstring)."""

    def __init__(self, failure_threshold: int = 5, reset_timeout_s: float = 5.0,
                 half_open_max: int = 1):
        for name, value in (("failure_threshold", failure_threshold),
                            ("half_open_max", half_open_max)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {value!r}")
        if isinstance(reset_timeout_s, bool) or not isinstance(reset_timeout_s, (int, float)) \
                or not math.isfinite(reset_timeout_s) or reset_timeout_s < 0:
            raise ValueError(f"reset_timeout_s: must be a finite number >= 0, "
                             f"got {reset_timeout_s!r}")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = float(reset_timeout_s)
        self.half_open_max = half_open_max
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._since = -math.inf  # when the current open state / half-open round began
        self._trials = 0
        self._transitions: Counter[tuple[str, str]] = Counter()

    @property
    def state(self) -> BreakerState:
        """The state after the last call (open -> half_open happens in :meth:`allow`)."""
        with self._lock:
            return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures in a row counted while closed (reset by a success or on closing)."""
        with self._lock:
            return self._failures

    @property
    def transitions(self) -> dict[tuple[str, str], int]:
        """How many times each ``(from, to)`` transition happened (for metrics)."""
        with self._lock:
            return dict(self._transitions)

    @property
    def transition_count(self) -> int:
        """Total number of state transitions."""
        with self._lock:
            return sum(self._transitions.values())

    def _move(self, to: BreakerState, now: float) -> None:
        self._transitions[(self._state.value, to.value)] += 1
        self._state = to
        self._since = now
        self._trials = 0
        if to is BreakerState.CLOSED:
            self._failures = 0

    def allow(self, now: float) -> bool:
        """Whether a call may go to the backend now (counts half-open trials)."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            elapsed = now - self._since
            if self._state is BreakerState.OPEN:
                if elapsed < self.reset_timeout_s:
                    return False
                self._move(BreakerState.HALF_OPEN, now)
            elif self._trials >= self.half_open_max and elapsed >= self.reset_timeout_s:
                self._since = now  # trials lost: start a new round
                self._trials = 0
            if self._trials < self.half_open_max:
                self._trials += 1
                return True
            return False

    def record_success(self, now: float) -> None:
        """A call succeeded: resets the failure count; closes a half-open breaker."""
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._move(BreakerState.CLOSED, now)
            elif self._state is BreakerState.CLOSED:
                self._failures = 0

    def record_failure(self, now: float) -> None:
        """A call failed: may open a closed breaker; re-opens a half-open one."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._move(BreakerState.OPEN, now)
            elif self._state is BreakerState.HALF_OPEN:
                self._move(BreakerState.OPEN, now)
