"""A bound on concurrent work that refuses instead of queueing (admission control)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class ConcurrencyLimit:
    """At most ``limit`` holders at once; one more is refused at once with ``refuse()``'s
    exception (typically a ``ResourceExhaustedError``), never queued. Use as a context
    manager; ``current`` is the number of holders now."""

    def __init__(self, limit: int, refuse: Callable[[int], Exception]):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.current = 0
        self._refuse = refuse
        self._lock = threading.Lock()

    def __enter__(self) -> ConcurrencyLimit:
        with self._lock:
            if self.current >= self.limit:
                raise self._refuse(self.limit)
            self.current += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self.current -= 1
