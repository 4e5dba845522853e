"""A dependency-free progress bar for long CLI work (stderr; plain lines when not a TTY)."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """A text progress bar of ``total`` items on ``stream`` (default stderr).

    On a TTY it redraws one line at most every ``min_interval`` seconds; otherwise it
    writes a plain line at most every 2 seconds.
    """

    def __init__(self, total: int, label: str = "", stream=None, width: int = 30,
                 min_interval: float = 0.1):
        self.total = max(0, total)
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval = min_interval if self.tty else 2.0
        self.started = time.monotonic()
        self._last = 0.0
        self.done = 0

    def update(self, done: int, note: str = "", force: bool = False) -> None:
        """Set the count of items done to ``done`` and redraw (rate-limited unless ``force``)."""
        self.done = done
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        frac = done / self.total if self.total else 1.0
        rate = done / max(1e-9, now - self.started)
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        text = (f"{self.label} [{bar}] {done}/{self.total} {frac:6.1%} "
                f"{rate:,.0f}/s {note}").rstrip()
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, note: str = "") -> None:
        """Draw the final state with ``note`` and end the line."""
        self.update(self.done, note, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
