"""``edge-coordinator``: serve, the admin commands, submit, calibrate and the demo."""

from coordinator.cli.main import main

__all__ = ["main"]
