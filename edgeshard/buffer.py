"""A hand-off between request threads and one background worker that never makes the
request wait: a FIFO bounded in items and in bytes, whose ``put`` refuses what does not
fit instead of blocking (the caller counts the drop)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BoundedBuffer(Generic[T]):
    """Entries of ``size(entry) -> (items, bytes)``, at most ``max_items`` items and
    ``max_bytes`` bytes in all. Thread-safe."""

    def __init__(self, max_items: int, max_bytes: int, size: Callable[[T], tuple[int, int]]):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._size = size
        self._entries: deque[T] = deque()
        self._items = 0
        self._bytes = 0
        self._cond = threading.Condition()
        self.closed = False

    @property
    def items(self) -> int:
        """Items held now."""
        with self._cond:
            return self._items

    def put(self, entry: T) -> bool:
        """Add ``entry`` if it fits and the buffer is open, without waiting; False if not."""
        items, size = self._size(entry)
        with self._cond:
            if (self.closed or self._items + items > self.max_items
                    or self._bytes + size > self.max_bytes):
                return False
            self._entries.append(entry)
            self._items += items
            self._bytes += size
            self._cond.notify()
            return True

    def wait(self) -> None:
        """Block until the buffer holds an entry or is closed."""
        with self._cond:
            while not self._entries and not self.closed:
                self._cond.wait()

    def take(self, select: Callable[[deque[T]], list[T]] | None = None) -> list[T]:
        """Remove and return entries at once: all of them, or those ``select(entries)``
        picks (it may only look; what it returns is taken, in order)."""
        with self._cond:
            if select is None:
                taken = list(self._entries)
                self._entries.clear()
            else:
                taken = select(self._entries)
                chosen = {id(e) for e in taken}
                self._entries = deque(e for e in self._entries if id(e) not in chosen)
            for entry in taken:
                items, size = self._size(entry)
                self._items -= items
                self._bytes -= size
            return taken

    def close(self) -> None:
        """Refuse further entries and wake the waiting worker."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
