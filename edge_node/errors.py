"""Exceptions of the edge node. Transport-free: each subclasses one of
``edgeshard.errors``' kinds, which ``edgeshard.rpc.STATUS`` maps to a gRPC status."""

from edgeshard import errors as kinds


class EdgeNodeError(kinds.EdgeshardError):
    """Base class of every error the edge node raises on purpose."""


class InvalidInputError(EdgeNodeError, kinds.InvalidArgumentError):
    """A request field is malformed; ``field`` names it (e.g. ``inputs[0].shape``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class ModelNotFoundError(EdgeNodeError, kinds.NotFoundError):
    """The requested model or version does not exist in the repository."""


class ModelUnavailableError(EdgeNodeError, kinds.UnavailableError):
    """The model exists but failed to load or is not ready."""


class ModelRefusedError(EdgeNodeError, kinds.InvalidArgumentError):
    """A load request found versions it could not serve (the message lists them and why)."""


class ModelLoadError(EdgeNodeError):
    """A model version could not be loaded (bad config, missing, corrupt or unsigned file).

    ``reason`` is a short code for metrics: ``invalid_model`` (config, TFLite file or
    calibration unusable), ``file_missing``, or one of ``edgeshard.manifest.REASONS``.
    """

    def __init__(self, message: str, reason: str = "invalid_model"):
        super().__init__(message)
        self.reason = reason


class OverloadedError(EdgeNodeError, kinds.ResourceExhaustedError):
    """The request queue is full; the client should back off or go elsewhere."""


class ShuttingDownError(EdgeNodeError, kinds.UnavailableError):
    """The node is draining and accepts no new work."""


class DeadlineExceededError(EdgeNodeError, kinds.DeadlineExceededError):
    """The request's deadline passed before it could be served."""


class RepositoryControlError(EdgeNodeError, kinds.FailedPreconditionError):
    """A repository load or unload this node cannot apply as a whole (several serving
    processes)."""
