"""What the fleet serves: is a model known, how large a batch do its nodes take, and
does the model accept a given item.

Answers from the registry; the batch size from one live node's model config (asked once
per model through an injected ``ask_max_batch`` and cached); whether an item is
acceptable by running it on a live node (``try_item``), so a job is checked by the
very rules that will run it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from coordinator.errors import JobInputError
from coordinator.fleet.registry import Registry
from edgeshard.errors import PeerStatusError

# ask_max_batch(address, model) -> the model's max batch size at that node, or None when
# the node cannot say (unreachable, no ModelConfig, or no batching limit).
AskMaxBatch = Callable[[str, str], "int | None"]
# try_item(address, model, version, items [1, ...], timeout_s): run one item; raises
# edgeshard.errors.PeerStatusError when the node refuses it or fails.
TryItem = Callable[[str, str, str, np.ndarray, float], None]
TRY_TIMEOUT_S = 5.0


class ModelCatalog:
    """The models of the fleet as the job path needs them."""

    def __init__(self, registry: Registry, ask_max_batch: AskMaxBatch,
                 try_item: TryItem | None = None):
        self.registry = registry
        self.ask_max_batch = ask_max_batch
        self.try_item = try_item
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

    def check_item(self, model: str, version: str, item_id: str, item: np.ndarray) -> None:
        """Run ``item`` (``[1, ...]``, a job's first item) on a live node serving ``model``.

        Raises ``JobInputError`` naming the item and quoting the node when the node refuses
        it as malformed (wrong shape, dtype, channels); every item of a job shares dtype and
        shape, so one stands for all. Node trouble (unreachable, busy) or no live node is
        not the item's fault: the check is skipped and the shards meet the same rules.
        """
        if self.try_item is None:
            return
        nodes = self.registry.routable(model, version)
        if not nodes:
            return
        try:
            self.try_item(nodes[0].address, model, version, item, TRY_TIMEOUT_S)
        except PeerStatusError as exc:
            if exc.caller_fault:
                raise JobInputError(f"items: {model} refuses item {item_id!r} (and so every "
                                    f"item of this job): {exc.details}", field="items") from None
