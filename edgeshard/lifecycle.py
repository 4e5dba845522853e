"""Run a daemon until SIGTERM or SIGINT, then drain it: the main loop of both daemons."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Protocol


class Daemon(Protocol):
    """What :func:`run_until_signal` runs: a server with ``start`` and a draining ``stop``."""

    def start(self) -> None:
        """Start serving; raises on failure."""
        ...

    def stop(self, grace: float | None = None) -> bool | None:
        """Drain within ``grace`` s (None: the daemon's default); False if work was cut off."""
        ...


def run_until_signal(daemon: Daemon, start_errors: tuple[type[BaseException], ...],
                     log: logging.Logger) -> int:
    """Start, wait for SIGTERM/SIGINT, stop (graceful drain). Exit code: 0 on a clean
    drain, 1 if it could not start or work had to be cut off."""
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start()
    except start_errors as exc:
        log.error("cannot start: %s", exc)
        daemon.stop(0)
        return 1
    while not stop.wait(0.5):
        pass
    return 0 if daemon.stop() is not False else 1
