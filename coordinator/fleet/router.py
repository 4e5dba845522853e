"""Online routing: which live node gets an inference request.

Without a routing key: power of two choices on outstanding load per unit of weight.
With one (a camera or stream id): weighted rendezvous hashing with bounded loads, so
the key sticks to its node while that node is within (1 + epsilon) of its fair share.
Slow nodes carry a smaller weight (``SlowNodePolicy``), so both rules send them less.

Failure behaviour: no node ever offered the model -> ``ModelNotServedError``; nodes
offer it but none is live -> ``NoNodeAvailableError``; all live ones are at capacity ->
the request waits for room until its deadline (a bounded wait: the forwarder's admission
bounds how many wait), then ``FleetSaturatedError``.
"""

from __future__ import annotations

import random
import threading
import time

from coordinator.errors import FleetSaturatedError, ModelNotServedError, NoNodeAvailableError
from coordinator.fleet.placement import Candidate, pick_for_key, pick_least_loaded_of_two
from coordinator.fleet.registry import NodeRecord, Registry

ROOM_POLL_S = 0.05  # a waiting request looks again at least this often


class Router:
    """Chooses the live node for an online request (see the module docstring).

    ``epsilon`` is the bounded-load slack for keyed requests; ``rng`` the random source for
    the two-choices pick (seed it for tests).
    """

    def __init__(self, registry: Registry, epsilon: float = 0.25,
                 rng: random.Random | None = None):
        self.registry = registry
        self.epsilon = epsilon
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()

    def any_node(self, model: str, version: str = "") -> NodeRecord:
        """A live node serving ``model`` for a control call (metadata, config): the least
        loaded per unit of weight, at capacity or not, since such calls are cheap and must
        answer when the fleet is busy. Raises ``ModelNotServedError`` or
        ``NoNodeAvailableError`` as ``choose`` does."""
        nodes = self._live(model, version, frozenset())
        return min(nodes, key=lambda n: ((n.outstanding + 1) / max(n.weight, 1e-9), n.node_id))

    def _live(self, model: str, version: str, exclude: frozenset[str]) -> list[NodeRecord]:
        nodes = [n for n in self.registry.routable(model, version) if n.address not in exclude]
        if not nodes:
            known = [n for n in self.registry.snapshot() if n.serves(model, version)]
            what = f"{model}" + (f" version {version}" if version else "")
            if not known:
                snapshot = self.registry.snapshot()
                if version and any(n.serves(model) for n in snapshot):
                    versions = sorted({v for n in snapshot for v in n.models.get(model, ())})
                    raise ModelNotServedError(
                        f"model_version: no node serves {what} (its versions: "
                        f"{', '.join(versions)})")
                served = self.registry.served_models()
                raise ModelNotServedError(f"model_name: no node serves {what} (served: "
                                          f"{', '.join(served) or 'none'})")
            raise NoNodeAvailableError(
                f"no live node for {what} ({len(known)} known, none live and undrained"
                + (", the others already failed this request" if exclude else "") + ")"
            )
        return nodes

    def choose(self, model: str, version: str = "", routing_key: str = "",
               exclude: frozenset[str] = frozenset(),
               deadline: float | None = None) -> NodeRecord:
        """Pick a routable node serving ``model`` (at ``version``), skipping ``exclude`` addresses.

        With a ``routing_key``, rendezvous hashing with bounded loads; without, the less loaded
        of two. While every node is at capacity, waits for room until ``deadline`` (a
        ``time.monotonic()`` reading; None: no wait). Raises ``ModelNotServedError``,
        ``NoNodeAvailableError`` or ``FleetSaturatedError`` as the module docstring describes.
        """
        while True:
            nodes = self._live(model, version, exclude)
            by_address = {n.address: n for n in nodes}
            candidates = [Candidate(n.address, weight=n.weight, load=n.outstanding,
                                    capacity=n.capacity) for n in nodes]
            if routing_key:
                chosen = pick_for_key(routing_key, candidates, self.epsilon)
            else:
                with self._rng_lock:
                    chosen = pick_least_loaded_of_two(candidates, self._rng)
            if chosen is not None:
                return by_address[chosen]
            remaining = 0.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise FleetSaturatedError(
                    f"all {len(nodes)} node(s) serving {model} are at capacity"
                    + (" for as long as the request could wait" if deadline is not None
                       else "") + "; retry later")
            self.registry.wait_for_room(min(remaining, ROOM_POLL_S))
