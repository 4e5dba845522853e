"""Exceptions of the coordinator. Transport-free: each that a caller can cause subclasses
one of ``edgeshard.errors``' kinds, which ``edgeshard.rpc.STATUS`` maps to a gRPC status.
``ShardNotFoundError`` and ``InvalidResultError`` mean the coordinator broke its own
invariants: they have no kind, so a caller sees INTERNAL and the log has the traceback."""

from edgeshard import errors as kinds


class CoordinatorError(kinds.EdgeshardError):
    """Base class of every error the coordinator raises on purpose."""


class JobInputError(CoordinatorError, kinds.InvalidArgumentError):
    """A job's input file (or array) is malformed; the message names file, item and field."""

    def __init__(self, message: str, path: str | None = None, item: int | None = None,
                 field: str | None = None):
        super().__init__(message)
        self.path = path
        self.item = item
        self.field = field


class InvalidJobError(CoordinatorError, kinds.InvalidArgumentError):
    """A job request's own arguments (model, shard size, params, job id) are invalid."""


class CascadeUnsupportedError(CoordinatorError, kinds.FailedPreconditionError):
    """A cascade rule names a model whose nodes serve it as another task than
    classification: the cascade needs class probabilities."""


class JobConflictError(CoordinatorError, kinds.AlreadyExistsError):
    """A caller-supplied job id already names a job with different content."""


class JobNotFoundError(CoordinatorError, kinds.NotFoundError):
    """No job has the given id."""


class ShardNotFoundError(CoordinatorError):
    """No shard has the given id."""


class InvalidResultError(CoordinatorError):
    """Results name an item outside their shard, or an attempt that was never leased."""


class UnknownNodeError(CoordinatorError, kinds.NotFoundError):
    """An admin command names a node the coordinator does not know."""


class ModelNotServedError(CoordinatorError, kinds.NotFoundError):
    """No known node has ever offered the requested model (version)."""


class NoNodeAvailableError(CoordinatorError, kinds.UnavailableError):
    """Nodes offer the model but none is live and undrained right now."""


class FleetSaturatedError(CoordinatorError, kinds.ResourceExhaustedError):
    """Every eligible node is at capacity, or the coordinator's own bound is reached."""


class ShuttingDownError(CoordinatorError, kinds.UnavailableError):
    """The coordinator is draining and accepts no new work."""


class InvalidRequestError(CoordinatorError, kinds.InvalidArgumentError):
    """A control-plane request lacks a required field or has a malformed one."""


class StoreFullError(CoordinatorError, kinds.ResourceExhaustedError):
    """The job store cannot write because its disk is full; writes resume once there is
    space again."""


class StoreUnavailableError(CoordinatorError, kinds.UnavailableError):
    """The job store cannot write (read-only file system, I/O error, locked); retried."""


class NodeUnauthenticatedError(CoordinatorError, kinds.UnauthenticatedError):
    """A node registered or sent a heartbeat without the proof of identity required."""


class NodeIdentityError(CoordinatorError, kinds.PermissionDeniedError):
    """A node's certificate or join token names another node than the one it claims."""


class JobAccessError(CoordinatorError, kinds.PermissionDeniedError):
    """A job belongs to another token's holder (only it, or an admin, may see or cancel it)."""


class RolloutNotFoundError(CoordinatorError, kinds.NotFoundError):
    """The model has no rollout (start one with ``edge-coordinator rollout start``)."""


class RolloutStateError(CoordinatorError, kinds.FailedPreconditionError):
    """The rollout is not in a state that allows the action (e.g. promoting a rolled back one)."""


class ExamplesNotFoundError(CoordinatorError, kinds.NotFoundError):
    """A model whose hard examples were asked for is unknown or has none stored."""
