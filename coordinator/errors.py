"""Exceptions of the coordinator. Transport-free: server code maps them to gRPC codes."""


class CoordinatorError(Exception):
    """Base class of every error the coordinator raises on purpose."""


class JobInputError(CoordinatorError):
    """A job's input file (or array) is malformed; the message names file, item and field."""

    def __init__(self, message: str, path: str | None = None, item: int | None = None,
                 field: str | None = None):
        super().__init__(message)
        self.path = path
        self.item = item
        self.field = field


class InvalidJobError(CoordinatorError):
    """A job request's own arguments (model, shard size, params, job id) are invalid."""


class JobConflictError(CoordinatorError):
    """A caller-supplied job id already names a job with different content."""


class JobNotFoundError(CoordinatorError):
    """No job has the given id."""


class ShardNotFoundError(CoordinatorError):
    """No shard has the given id."""


class InvalidResultError(CoordinatorError):
    """Results name an item outside their shard, or an attempt that was never leased."""


class UnknownNodeError(CoordinatorError):
    """An admin command names a node the coordinator does not know."""


class ModelNotServedError(CoordinatorError):
    """No known node has ever offered the requested model (version)."""


class NoNodeAvailableError(CoordinatorError):
    """Nodes offer the model but none is live and undrained right now."""


class FleetSaturatedError(CoordinatorError):
    """Every eligible node is at capacity, or the coordinator's own bound is reached."""


class ShuttingDownError(CoordinatorError):
    """The coordinator is draining and accepts no new work."""


class InvalidRequestError(CoordinatorError):
    """A control-plane request lacks a required field or has a malformed one."""
