"""Exceptions of the edge node. Transport-free: server code maps them to gRPC codes."""


class EdgeNodeError(Exception):
    """Base class of every error the edge node raises on purpose."""


class InvalidInputError(EdgeNodeError):
    """A request field is malformed; ``field`` names it (e.g. ``inputs[0].shape``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class ModelNotFoundError(EdgeNodeError):
    """The requested model or version does not exist in the repository."""


class ModelUnavailableError(EdgeNodeError):
    """The model exists but failed to load or is not ready."""


class ModelLoadError(EdgeNodeError):
    """A model version could not be loaded (bad config, missing or corrupt file)."""


class OverloadedError(EdgeNodeError):
    """The request queue is full; the client should back off or go elsewhere."""


class ShuttingDownError(EdgeNodeError):
    """The node is draining and accepts no new work."""


class DeadlineExceededError(EdgeNodeError):
    """The request's deadline passed before it could be served."""
