"""Error kinds both daemons share. Transport-free: no gRPC import.

Each package's own exceptions (``edge_node.errors``, ``coordinator.errors``) subclass one
of these kinds; ``edgeshard.rpc.STATUS`` is the one table that maps a kind to a gRPC
status code, so a new exception needs no new table entry.
"""

from __future__ import annotations

# Status names (gRPC's) after which a call may be tried again on another server: the
# server was unreachable or too slow. Anything else (INVALID_ARGUMENT above all) is the
# caller's or the model's answer and is never retried.
RETRYABLE_STATUSES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
# Status names that blame the request, not the server that answered it: the server is
# healthy, so they never count against a circuit breaker, and the caller who sent the
# request is told.
CALLER_FAULT_STATUSES = frozenset({"INVALID_ARGUMENT", "OUT_OF_RANGE", "FAILED_PRECONDITION"})


class EdgeshardError(Exception):
    """Base class of every error edgeshard raises on purpose."""


class InvalidArgumentError(EdgeshardError):
    """The caller sent something malformed; the message names the field (INVALID_ARGUMENT)."""


class FailedPreconditionError(EdgeshardError):
    """The request is well-formed but the system is not in a state to run it, e.g. a
    cascade configured for a model that is not a classifier (FAILED_PRECONDITION)."""


class NotFoundError(EdgeshardError):
    """The named model, version, node or job does not exist (NOT_FOUND)."""


class AlreadyExistsError(EdgeshardError):
    """A caller-chosen id is taken by something different (ALREADY_EXISTS)."""


class UnavailableError(EdgeshardError):
    """The service cannot take the call now, e.g. draining or no node is live (UNAVAILABLE)."""


class ResourceExhaustedError(EdgeshardError):
    """A queue or concurrency bound is full; back off or go elsewhere (RESOURCE_EXHAUSTED)."""


class DeadlineExceededError(EdgeshardError):
    """The caller's deadline passed before the work was done (DEADLINE_EXCEEDED)."""


class UnauthenticatedError(EdgeshardError):
    """The caller did not prove who it is: no credentials, or invalid ones (UNAUTHENTICATED)."""


class PermissionDeniedError(EdgeshardError):
    """The caller is known but may not do this (PERMISSION_DENIED)."""


class BindError(EdgeshardError, OSError):
    """A server port cannot be bound: ``field`` is the setting that chose it (``port``,
    ``metrics_port``), ``address`` the ``host:port``; the message names both and says
    which flag and environment variable choose another."""

    def __init__(self, field: str, address: str, reason: str = "in use?"):
        super().__init__(
            f"{field}: cannot bind {address} ({reason}); choose another port with "
            f"--{field.replace('_', '-')} (or EDGESHARD_{field.upper()}; 0 picks a free one)")
        self.field = field
        self.address = address


class PeerStatusError(EdgeshardError):
    """A peer server (edge node, cloud tier) answered a call with an error status.

    ``status`` is the gRPC status name (``"UNAVAILABLE"``), ``details`` the peer's
    message. Passed back to the caller with the peer's own status.
    """

    def __init__(self, status: str, details: str):
        super().__init__(details)
        self.status = status
        self.details = details

    @property
    def summary(self) -> str:
        """``STATUS: details`` on one line, for logs and stored results."""
        return f"{self.status}: {self.details}"

    @property
    def retryable(self) -> bool:
        """True when another server may succeed (``RETRYABLE_STATUSES``)."""
        return self.status in RETRYABLE_STATUSES

    @property
    def caller_fault(self) -> bool:
        """True when the request itself was refused (``CALLER_FAULT_STATUSES``)."""
        return self.status in CALLER_FAULT_STATUSES
