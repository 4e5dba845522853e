"""What the fleet serves: is a model known, how large a batch do its nodes take, and
does the model accept a given item.

Answers from the registry; the batch size and label names from one live node's model
config (asked once per model through an injected ``ask_facts`` and cached); whether an item is
acceptable by running it on a live node (``try_item``), so a job is checked by the
very rules that will run it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from coordinator.errors import JobInputError
from coordinator.fleet.registry import Registry
from edgeshard.errors import PeerStatusError


@dataclass(frozen=True)
class ModelFacts:
    """What a node's model config says: the max batch size (None: no limit given) and the
    class label names, in class-index order (empty: none configured)."""

    max_batch_size: int | None
    labels: tuple[str, ...] = ()


# ask_facts(address, model) -> the model's facts at that node, or None when the node
# cannot say (unreachable, or no ModelConfig).
AskFacts = Callable[[str, str], "ModelFacts | None"]
# try_item(address, model, version, items [1, ...], timeout_s): run one item; raises
# edgeshard.errors.PeerStatusError when the node refuses it or fails.
TryItem = Callable[[str, str, str, np.ndarray, float], None]
TRY_TIMEOUT_S = 5.0


class ModelCatalog:
    """The models of the fleet as the job path needs them."""

    def __init__(self, registry: Registry, ask_facts: AskFacts,
                 try_item: TryItem | None = None):
        self.registry = registry
        self.ask_facts = ask_facts
        self.try_item = try_item
        self._facts: dict[str, ModelFacts] = {}
        self._lock = threading.Lock()

    def known(self, model: str, version: str = "") -> bool:
        """True when any known node (live or not) has offered ``model`` (at ``version``)."""
        return any(n.serves(model, version) for n in self.registry.snapshot())

    def facts(self, model: str) -> ModelFacts | None:
        """The model's facts from a live node (cached once known), or None while no live
        node can say."""
        with self._lock:
            if model in self._facts:
                return self._facts[model]
        nodes = self.registry.routable(model)
        if not nodes:
            return None
        facts = self.ask_facts(nodes[0].address, model)
        if facts is not None:
            with self._lock:
                self._facts[model] = facts
        return facts

    def max_batch_size(self, model: str) -> int | None:
        """The model's max batch size at the nodes, or None while unknown or unlimited."""
        facts = self.facts(model)
        return facts.max_batch_size if facts is not None else None

    def labels(self, model: str) -> tuple[str, ...]:
        """The model's class label names (empty while unknown or not configured)."""
        facts = self.facts(model)
        return facts.labels if facts is not None else ()

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
