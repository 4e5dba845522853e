"""gRPC server helpers shared by the edge node and the coordinator."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import grpc

NO_DEADLINE = 1e6  # grpc reports "no deadline" as ~9e18 s remaining


def time_left(context: grpc.ServicerContext, default: float | None = None) -> float | None:
    """Seconds until the caller's deadline, or ``default`` if the caller set none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE:
        return default
    return remaining


def guarded(status_for: Callable[[BaseException], tuple[grpc.StatusCode, str]],
            log: logging.Logger) -> Callable:
    """Decorator for servicer methods: an exception becomes the status ``status_for`` maps
    it to; INTERNAL ones (anything unexpected) are logged with their traceback and answered
    with a generic message. Works for unary and server-streaming handlers."""

    def decorate(method: Callable) -> Callable:
        def abort(context, exc: Exception):
            code, message = status_for(exc)
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
