"""What the fleet serves: is a model known, how large a batch do its nodes take, which
task, tensors and labels it has, and does the model accept a given item.

Answers from the registry; the batch size, task, tensors and label names from one live
node's model config and metadata (asked once per model through an injected ``ask_facts``
and cached); whether an item is acceptable by running it on a live node (``try_item``), so
a job is checked by the very rules that will run it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from coordinator.errors import JobInputError
from coordinator.fleet.registry import Registry
from edgeshard.errors import PeerStatusError

CLASSIFICATION = "classification"  # the task of a node that does not say (older nodes)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model as its metadata lists it (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelFacts:
    """What a node's model config and metadata say: the max batch size (None: no limit
    given), the class label names in class-index order (empty: none configured), the task
    (``classification``, ``tensor``, ``detection``...), the inputs and outputs (empty when
    the node did not say) and whether the model batches (False: one item per request, and
    its tensors' shapes are full shapes, batch dimension included)."""

    max_batch_size: int | None
    labels: tuple[str, ...] = ()
    task: str = CLASSIFICATION
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    batched: bool = True


# ask_facts(address, model) -> the model's facts at that node, or None when the node
# cannot say (unreachable, or no ModelConfig).
AskFacts = Callable[[str, str], "ModelFacts | None"]
# try_item(address, model, version, items [1, ...], timeout_s): run one item; returns the
# bytes of the node's answer; raises edgeshard.errors.PeerStatusError when the node refuses
# it or fails.
TryItem = Callable[[str, str, str, np.ndarray, float], int]
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

    def task(self, model: str) -> str:
        """The model's task at the nodes (``classification`` while unknown: older nodes
        serve nothing else)."""
        facts = self.facts(model)
        return facts.task if facts is not None else CLASSIFICATION

    def labels(self, model: str) -> tuple[str, ...]:
        """The model's class label names (empty while unknown or not configured)."""
        facts = self.facts(model)
        return facts.labels if facts is not None else ()

    def check_item(self, model: str, version: str, item_id: str,
                   item: np.ndarray) -> int | None:
        """Run ``item`` (``[1, ...]``, a job's first item) on a live node serving ``model``;
        the size in bytes of the node's answer (every output), or None when not run.

        Raises ``JobInputError`` naming the item and quoting the node when the node refuses
        it as malformed (wrong shape, dtype, channels); every item of a job shares dtype and
        shape, so one stands for all. Node trouble (unreachable, busy) or no live node is
        not the item's fault: the check is skipped and the shards meet the same rules.
        """
        if self.try_item is None:
            return None
        nodes = self.registry.routable(model, version)
        if not nodes:
            return None
        try:
            return self.try_item(nodes[0].address, model, version, item, TRY_TIMEOUT_S)
        except PeerStatusError as exc:
            if exc.caller_fault:
                raise JobInputError(f"items: {model} refuses item {item_id!r} (and so every "
                                    f"item of this job): {exc.details}", field="items") from None
            return None
