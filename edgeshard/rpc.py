"""gRPC server helpers shared by the edge node and the coordinator."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping

import grpc

NO_DEADLINE = 1e6  # grpc reports "no deadline" as ~9e18 s remaining


def time_left(context: grpc.ServicerContext, default: float | None = None) -> float | None:
    """Seconds until the caller's deadline, or ``default`` if the caller set none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE:
        return default
    return remaining


def status_for(exc: BaseException, table: Mapping[type, grpc.StatusCode],
               process: str) -> tuple[grpc.StatusCode, str]:
    """The status for an exception: its own ``status_code`` attribute (a peer's status
    passed through), else the first ``table`` entry it is an instance of, else INTERNAL
    with a generic message that points at ``process``'s log."""
    own = getattr(exc, "status_code", None)
    if isinstance(own, grpc.StatusCode):
        return own, str(exc)
    for kind, code in table.items():
        if isinstance(exc, kind):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error (see the {process}'s log)"


def guarded(table: Mapping[type, grpc.StatusCode], process: str,
            log: logging.Logger) -> Callable:
    """Decorator for servicer methods: an exception becomes the status ``status_for`` maps
    it to; INTERNAL ones (anything unexpected) are logged with their traceback and answered
    with a generic message. Works for unary and server-streaming handlers."""

    def decorate(method: Callable) -> Callable:
        def abort(context, exc: Exception):
            code, message = status_for(exc, table, process)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method.__name__)
            context.abort(code, message)

        if _is_generator(method):
            @functools.wraps(method)
            def stream(self, request, context):
                try:
                    yield from method(self, request, context)
                except Exception as exc:  # noqa: BLE001 - the table decides
                    abort(context, exc)
            return stream

        @functools.wraps(method)
        def unary(self, request, context):
            try:
                return method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - the table decides
                abort(context, exc)
        return unary

    return decorate


def _is_generator(fn: Callable) -> bool:
    import inspect

    return inspect.isgeneratorfunction(fn)
