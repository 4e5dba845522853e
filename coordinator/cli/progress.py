"""A dependency-free progress bar for long CLI work (stderr; plain lines when not a TTY)."""

from __future__ import annotations

import sys
import threading
import time


class ProgressBar:
    """A text progress bar of ``total`` items on ``stream`` (default stderr).

    The line shows the count, the share of ``total``, the average rate since ``started``
    (``time.monotonic()``; default: now) in ``unit`` per second, and a note saying what
    the work waits for, if anything. ``total`` may be None while unknown (no bar then).

    On a TTY it redraws one line at most every ``min_interval`` seconds; otherwise it
    writes a plain line at most every 2 seconds, and only when the count or the note
    changed. An update skipped by that rate limit is not lost: ``refresh`` (called by a
    background poller, or the next update) draws it, so the line never stays on a stale
    count. Safe to call from several threads.
    """

    def __init__(self, total: int | None, label: str = "", stream=None, width: int = 30,
                 min_interval: float = 0.1, started: float | None = None,
                 unit: str = "items"):
        self.total = None if total is None else max(0, total)
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.unit = unit
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval = min_interval if self.tty else 2.0
        self.started = time.monotonic() if started is None else started
        self.done = 0
        self.note = ""
        self._last = 0.0
        self._drawn: tuple[int, str, int | None] | None = None  # what the line shows
        self._lock = threading.Lock()

    def update(self, done: int | None = None, note: str | None = None,
               force: bool = False, total: int | None = None) -> None:
        """Set the count (``done``), the ``note`` and/or the ``total`` and redraw
        (rate-limited unless ``force``); None keeps the current value."""
        with self._lock:
            if done is not None:
                self.done = done
            if note is not None:
                self.note = note
            if total is not None:
                self.total = max(0, total)
            self._draw(force)

    def say(self, line: str) -> None:
        """Write ``line`` on a line of its own (above the bar on a TTY, which redraws next)."""
        with self._lock:
            self.stream.write(("\r" + line + "\x1b[K\n") if self.tty else line + "\n")
            self.stream.flush()
            self._drawn, self._last = None, 0.0

    def refresh(self) -> None:
        """Draw the latest count and note if the line does not show them yet."""
        with self._lock:
            self._draw(False)

    def text(self, now: float | None = None) -> str:
        """The progress line as it would be drawn now."""
        now = time.monotonic() if now is None else now
        if self.total is None:
            return f"{self.label} {self.note}".strip()
        frac = self.done / self.total if self.total else 1.0
        rate = self.done / max(1e-9, now - self.started)
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        return (f"{self.label} [{bar}] {self.done}/{self.total} {frac:6.1%} "
                f"{rate:,.0f} {self.unit}/s {self.note}").rstrip()

    def _draw(self, force: bool, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        state = (self.done, self.note, self.total)
        if not force:
            if now - self._last < self.min_interval:
                return
            if not self.tty and state == self._drawn:
                return  # a log file gets a line per change, not one per tick
        self._last, self._drawn = now, state
        if self.tty:
            self.stream.write("\r" + self.text(now) + "\x1b[K")
        else:
            self.stream.write(self.text(now) + "\n")
        self.stream.flush()

    def close(self, note: str = "", now: float | None = None) -> None:
        """Draw the final state with ``note`` and end the line; ``now`` (``time.monotonic()``,
        default: now) is the end the rate is computed for."""
        with self._lock:
            self.note = note
            self._draw(True, now)
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
