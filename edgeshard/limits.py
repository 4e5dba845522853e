"""A bound on concurrent work that refuses instead of queueing (admission control)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from edgeshard.errors import ResourceExhaustedError


class ConcurrencyLimit:
    """At most ``limit`` holders at once; one more is refused at once, never queued.

    As a context manager it raises ``refuse(limit)``'s exception (typically a
    ``ResourceExhaustedError``); ``try_enter``/``exit`` let a caller refuse in its own way.
    ``current`` is the number of holders now."""

    def __init__(self, limit: int, refuse: Callable[[int], Exception] | None = None):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.current = 0
        self._refuse = refuse
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        """Take a place if one is free; False (nothing taken) when ``limit`` are taken."""
        with self._lock:
            if self.current >= self.limit:
                return False
            self.current += 1
            return True

    def exit(self) -> None:
        """Give back a place taken with ``try_enter``."""
        with self._lock:
            self.current -= 1

    def __enter__(self) -> ConcurrencyLimit:
        if not self.try_enter():
            if self._refuse is None:
                raise ResourceExhaustedError(f"at the limit of {self.limit}; retry later")
            raise self._refuse(self.limit)
        return self

    def __exit__(self, *exc) -> None:
        self.exit()
