"""What the fleet serves: is a model known, and how large a batch do its nodes take.

Answers from the registry, and for the batch size from one live node's model config
(asked once per model through an injected ``ask_max_batch`` and cached).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from coordinator.fleet.registry import Registry

# ask_max_batch(address, model) -> the model's max batch size at that node, or None when
# the node cannot say (unreachable, no ModelConfig, or no batching limit).
AskMaxBatch = Callable[[str, str], "int | None"]


class ModelCatalog:
    """The models of the fleet as the job path needs them."""

    def __init__(self, registry: Registry, ask_max_batch: AskMaxBatch):
        self.registry = registry
        self.ask_max_batch = ask_max_batch
        self._max_batch: dict[str, int] = {}
        self._lock = threading.Lock()

    def known(self, model: str) -> bool:
        """True when any known node (live or not) has offered ``model``."""
        return any(n.serves(model) for n in self.registry.snapshot())

    def max_batch_size(self, model: str) -> int | None:
        """The model's max batch size at the nodes, or None while no live node can say."""
        with self._lock:
            if model in self._max_batch:
                return self._max_batch[model]
        nodes = self.registry.routable(model)
        if not nodes:
            return None
        size = self.ask_max_batch(nodes[0].address, model)
        if size is not None and size > 0:
            with self._lock:
                self._max_batch[model] = size
            return size
        return None
