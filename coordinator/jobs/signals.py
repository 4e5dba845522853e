"""Wake the streams that follow a job when it changes, without a thread per stream.

Followers (``Watch``, ``FetchResults(follow)``) are coroutines on the API server's event
loop; what changes a job (a shard's results committed, a cancel) happens on ordinary
threads. ``JobSignals.notify(job_id)`` may be called from any thread; a follower holds a
``Subscription`` and awaits it with a timeout. The timeout is the safety net for changes
nobody signals here (another replica's commits, the spool's replays), so a follower
never waits longer than it for news.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable


class Subscription:
    """One follower's interest in one job; ``wait`` returns early after a change.

    A change while the follower is not waiting (it is reading the job, or pacing its
    updates) is only remembered: the next ``wait`` returns at once. The event loop is
    woken only for a follower that waits, once per wait, so a job committing hundreds of
    shards a second costs its followers' loop a wake-up per update they send, not one per
    commit.
    """

    def __init__(self, signals: JobSignals, job_id: str, loop: asyncio.AbstractEventLoop):
        self._signals = signals
        self.job_id = job_id
        self.loop = loop
        self.event = asyncio.Event()
        self.changed = False  # a change not yet returned by wait (under the signals' lock)
        self.waiting = False  # in wait, not yet woken (under the signals' lock)

    async def wait(self, timeout: float) -> bool:
        """Wait until the job changed since the last wait (True) or ``timeout`` seconds
        passed (False)."""
        with self._signals._lock:
            if self.changed:
                self.changed = False
                return True
            self.waiting = True
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._signals._lock:
                self.waiting = self.changed = False
            self.event.clear()

    def close(self) -> None:
        """Stop listening."""
        self._signals._drop(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JobSignals:
    """Thread-safe fan-out of "job changed" to asyncio followers."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self._changed: dict[str, float] = {}  # job -> last notify, while it has followers

    def subscribe(self, job_id: str) -> Subscription:
        """A subscription to ``job_id`` for the running event loop (call from a coroutine);
        subscribe before reading the job, so no change between the read and the wait is
        missed."""
        sub = Subscription(self, job_id, asyncio.get_running_loop())
        with self._lock:
            self._subs[job_id].add(sub)
        return sub

    def notify(self, job_id: str) -> None:
        """The job changed: wake its followers (from any thread)."""
        wake = []
        with self._lock:
            subs = self._subs.get(job_id, ())
            if subs:
                self._changed[job_id] = self._clock()
            for sub in subs:
                if sub.waiting and not sub.changed:
                    wake.append(sub)  # waiting and not yet woken: wake it, once
                sub.changed = True
        for sub in wake:
            with contextlib.suppress(RuntimeError):  # its loop closed: the server stopped
                sub.loop.call_soon_threadsafe(sub.event.set)

    def notify_all(self) -> None:
        """Wake every follower (the coordinator is stopping: they look and end)."""
        with self._lock:
            job_ids = list(self._subs)
        for job_id in job_ids:
            self.notify(job_id)

    def changed_at(self, job_id: str) -> float:
        """When the job was last notified while followed (the clock's reading), or -inf:
        what a follower read before it may be stale."""
        with self._lock:
            return self._changed.get(job_id, -math.inf)

    def followers(self) -> int:
        """How many subscriptions there are, over every job."""
        with self._lock:
            return sum(len(s) for s in self._subs.values())

    def _drop(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.job_id]
                    self._changed.pop(sub.job_id, None)
