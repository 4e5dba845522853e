"""The online data plane: one inference request through the fleet, then the cascade.

As in MLServer's ``DataPlane``: the gRPC ``InferenceServicer`` converts a request, calls
one method here, and converts the answer. Transport-free: the call to a node, how to read
the edge's probabilities from its answer, and the request's items are functions the api
layer supplies, so the message is forwarded without decoding unless the cascade needs it.

``infer``: the forwarder routes the call (admission, waiting for room, one retry on
another node); without a cascade rule for the model the node's answer is final (and
``infer_async`` does that on the API server's event loop, with no thread hand-off). With one,
the cascade decides per item within what is left of the caller's deadline; a cloud
refusal of the items as malformed is the caller's error (``PeerStatusError``). The cascade
needs class probabilities: a rule for a model whose nodes serve it as another task
(``task_of``) is refused, FAILED_PRECONDITION naming the model and its task (logged once
per model), before anything is forwarded; any other model is forwarded as it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from coordinator import errors
from coordinator.cascade.decision import Cascade, Decision
from coordinator.fleet.catalog import CLASSIFICATION
from coordinator.fleet.forwarder import AsyncNodeCall, Forwarder, NodeCall, RunBlocking
from coordinator.fleet.registry import NodeRecord
from edgeshard.errors import PeerStatusError

log = logging.getLogger(__name__)

MIN_CLOUD_S = 0.001  # the cascade always gets this much time, even past the deadline


@dataclass(frozen=True)
class OnlineAnswer:
    """A node's answer (as the transport returned it), the node, whether it took a retry,
    and, for a cascaded model, the edge's probabilities float32 [N, K] and the cascade's
    decision."""

    response: Any
    node: NodeRecord
    retried: bool
    probabilities: np.ndarray | None = None
    decision: Decision | None = None


class DataPlane:
    """Online inference and the node choice for control calls, over one ``Forwarder``.
    ``task_of(model)`` is the model's task at the nodes (``classification`` when unknown)."""

    def __init__(self, forwarder: Forwarder, cascade: Cascade | None = None,
                 task_of: Callable[[str], str] = lambda model: CLASSIFICATION):
        self.forwarder = forwarder
        self.cascade = cascade
        self.task_of = task_of
        self._refused: set[str] = set()  # models whose refusal was logged

    def cascaded(self, model: str) -> bool:
        """True when ``model`` has a cascade rule (its answers may go to the cloud);
        ``CascadeUnsupportedError`` when it has one but is not a classifier."""
        if self.cascade is None or self.cascade.rule(model) is None:
            return False
        task = self.task_of(model)
        if task != CLASSIFICATION:
            message = (f"model {model!r} has a cascade rule (--cascade/--escalation) but its "
                       f"nodes serve it as task {task!r}; the cascade needs a classification "
                       "model's probabilities: remove the rule for it, or serve it with "
                       "task = \"classification\"")
            if model not in self._refused:
                self._refused.add(model)
                log.error("%s (refusing its requests)", message)
            raise errors.CascadeUnsupportedError(message)
        return True

    def infer(self, model: str, version: str, routing_key: str, timeout: float,
              call: NodeCall, probabilities_of: Callable[[Any], np.ndarray],
              items: Callable[[], np.ndarray],
              item_ids: Callable[[int], list[str]], segment: str = "",
              version_of: Callable[[Any], str] = lambda answer: "") -> OnlineAnswer:
        """Run ``call`` on a node chosen for ``model`` within ``timeout`` seconds, then the
        cascade when the model has a rule (``probabilities_of(answer)``, ``items()``,
        ``item_ids(n)`` and ``version_of(answer)`` are only called then; the version and
        ``segment`` key edge/cloud agreement).

        Raises what ``Forwarder.forward`` raises, and ``PeerStatusError`` when the cloud
        refuses the escalated items as malformed.
        """
        deadline = time.monotonic() + timeout
        cascaded = self.cascaded(model)
        done = self.forwarder.forward(model, version, routing_key, timeout, call)
        rule = self.cascade.rule(model) if cascaded else None
        if rule is None:
            return OnlineAnswer(done.answer, done.node, done.retried)
        probabilities = probabilities_of(done.answer)
        decision = self.cascade.decide(rule, items(), probabilities,
                                       item_ids(len(probabilities)),
                                       max(MIN_CLOUD_S, deadline - time.monotonic()),
                                       version_of(done.answer), segment)
        if decision.refusal is not None:
            raise PeerStatusError(decision.refusal.status,
                                  f"cloud tier refused the escalated items: "
                                  f"{decision.refusal.details}")
        return OnlineAnswer(done.answer, done.node, done.retried, probabilities, decision)

    async def infer_async(self, model: str, version: str, routing_key: str, timeout: float,
                          call: AsyncNodeCall, run_blocking: RunBlocking) -> OnlineAnswer:
        """``infer`` for a model without a cascade rule, on an event loop: the node's
        answer is final (``Forwarder.forward_async``). Raises what ``forward_async``
        raises; ``ValueError`` for a cascaded model (its requests go through ``infer``)."""
        if self.cascaded(model):
            raise ValueError(f"model {model!r} has a cascade rule: use DataPlane.infer")
        done = await self.forwarder.forward_async(model, version, routing_key, timeout, call,
                                                  run_blocking)
        return OnlineAnswer(done.answer, done.node, done.retried)

    def node_for(self, model: str, version: str = "") -> NodeRecord:
        """A live node serving ``model`` for a control call (metadata, config), whatever
        its load; ``ModelNotServedError`` / ``NoNodeAvailableError`` otherwise."""
        return self.forwarder.router.any_node(model, version)

    def live_nodes(self, model: str = "", version: str = "") -> list[NodeRecord]:
        """The live, undrained nodes; with ``model``, ``ModelNotServedError`` unless one of
        them serves it."""
        nodes = [n for n in self.forwarder.registry.snapshot() if n.routable]
        if model and not any(n.serves(model, version) for n in nodes):
            raise errors.ModelNotServedError(f"model_name: no live node serves {model}")
        return nodes
