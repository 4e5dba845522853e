"""Ctrl-C in the CLI: clean up what matters, then leave at once with exit code 130.

A gRPC call interrupted by ``KeyboardInterrupt`` while it waits leaves completion events
that no thread will collect, and closing its channel waits for every call's events:
``Channel.close()``, and the channel's finalizer when the last reference goes, can then
block for ever. So after Ctrl-C a command stops its processes and saves its state, leaves
its clients open (``close_client``) and raises ``Interrupted``; ``exit_interrupted``
prints the message and ends the process before any channel is finalized. The process's
sockets close with it.
"""

from __future__ import annotations

import contextlib
import os
import sys

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


class Interrupted(KeyboardInterrupt):  # noqa: N818 - a KeyboardInterrupt, not an error
    """Ctrl-C after the command cleaned up; the message says what it left and how to go on.

    A ``KeyboardInterrupt``, so that no ``except Exception`` on the way out reports it as
    a failure.
    """


def close_client(client, interrupted: bool | None = None) -> None:
    """Close ``client`` (anything with ``close()``) unless the command was interrupted.

    ``interrupted`` None means: is a ``KeyboardInterrupt`` propagating right now (call it
    from a ``finally`` block)?
    """
    if interrupted is None:
        kind = sys.exc_info()[0]
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
    if not interrupted:
        client.close()


def exit_interrupted(message: str) -> None:
    """Print ``message`` on stderr and end the process with ``INTERRUPTED`` (130) now,
    without finalizing gRPC channels (see the module's docstring)."""
    with contextlib.suppress(OSError):  # a reader that went away
        sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)
    os._exit(INTERRUPTED)
