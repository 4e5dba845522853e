"""The one exception -> gRPC status table and the servicer guard, for both daemons."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import grpc

from edgeshard import errors
from protos.codec import TensorError

NO_DEADLINE = 1e6  # grpc reports "no deadline" as ~9e18 s remaining

# The first entry an exception is an instance of decides its status; anything else is
# INTERNAL with a generic message (and its traceback in the log).
STATUS: dict[type[BaseException], grpc.StatusCode] = {
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    TensorError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
}

# The HTTP status of each gRPC status, for the Open Inference Protocol's REST binding
# (what Triton and KServe answer); a status not listed is 500.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# Status codes worth retrying on another server (clients, the coordinator's forwarder).
RETRYABLE: frozenset[grpc.StatusCode] = frozenset(
    grpc.StatusCode[name] for name in errors.RETRYABLE_STATUSES)


def time_left(context: grpc.ServicerContext, default: float | None = None) -> float | None:
    """Seconds until the caller's deadline, or ``default`` if the caller set none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE:
        return default
    return remaining


def peer_error(exc: grpc.RpcError, fallback: str) -> errors.PeerStatusError:
    """A peer's failed call as a transport-free ``PeerStatusError`` (``fallback`` when
    the peer gave no details)."""
    return errors.PeerStatusError(exc.code().name, exc.details() or fallback)


def status_for(exc: BaseException, process: str) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller gets for ``exc``.

    A ``PeerStatusError`` keeps the peer's own status; otherwise the first ``STATUS``
    entry ``exc`` is an instance of; otherwise INTERNAL with a generic message that
    points at ``process``'s log (the details stay on the server).
    """
    if isinstance(exc, errors.PeerStatusError):
        return grpc.StatusCode[exc.status], exc.details
    for kind, code in STATUS.items():
        if isinstance(exc, kind):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error (see the {process}'s log)"


def http_status_for(exc: BaseException, process: str) -> tuple[int, str]:
    """The HTTP status and message a REST caller gets for ``exc``: ``status_for``'s
    status through ``HTTP_STATUS``."""
    code, message = status_for(exc, process)
    return HTTP_STATUS.get(code, 500), message


def guarded(process: str, log: logging.Logger) -> Callable[[Callable], Callable]:
    """Decorator for servicer methods: an exception becomes the status ``status_for`` maps
    it to; INTERNAL ones (anything unexpected) are logged with their traceback and answered
    with a generic message. Works for unary and server-streaming handlers, plain or
    ``async`` (a grpc.aio server runs the plain ones on its thread pool, the coroutines on
    its event loop)."""

    def decorate(method: Callable) -> Callable:
        def answer(context, exc: Exception) -> tuple[grpc.StatusCode, str]:
            active = getattr(context, "is_active", None)  # grpc.aio's contexts lack it
            if isinstance(exc, grpc.RpcError) and active is not None and not active():
                # The client cancelled or went away while we read its stream: no error.
                log.info("%s: the client went away", method.__name__)
                return grpc.StatusCode.CANCELLED, "the client went away"
            code, message = status_for(exc, process)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method.__name__)
            return code, message

        def abort(context, exc: Exception):
            context.abort(*answer(context, exc))

        if inspect.isasyncgenfunction(method):
            @functools.wraps(method)
            async def async_stream(self, request, context):
                try:
                    async for item in method(self, request, context):
                        yield item
                except Exception as exc:  # noqa: BLE001 - the table decides
                    await context.abort(*answer(context, exc))
            return async_stream

        if inspect.iscoroutinefunction(method):
            @functools.wraps(method)
            async def async_unary(self, request, context):
                try:
                    return await method(self, request, context)
                except Exception as exc:  # noqa: BLE001 - the table decides
                    await context.abort(*answer(context, exc))
            return async_unary

        if inspect.isgeneratorfunction(method):
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
