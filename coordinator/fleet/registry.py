"""Fleet membership: which nodes exist, which are alive, what they serve, how loaded they are.

Nodes are keyed by the address the coordinator dials (``host:port``): seeds, registrations
and zeroconf adverts of the same node merge into one record. State machine:

    candidate --probe ok--> live --silent > suspect_after--> suspect --silent > dead_after--> dead
        ^                    ^  \\--request failed (UNAVAILABLE)--> suspect                 |
        |                    +------------------- probe ok ---------------------------------+

Only ``live`` nodes that are not drained get new work. A node is admitted only after a
successful health check; heartbeats and probes both count as "heard from". mDNS adverts
never keep a node alive (a crashed node lingers in mDNS caches for minutes).

Pure bookkeeping: no gRPC, no threads of its own; callers pass the clock.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from coordinator.errors import UnknownNodeError
from coordinator.fleet.rebalance import Ewma

CANDIDATE, LIVE, SUSPECT, DEAD = "candidate", "live", "suspect", "dead"
LATENCY_HALF_LIFE_S = 5.0  # observed latency: a sample's weight halves every 5 s


@dataclass
class NodeRecord:
    """One node as the coordinator knows it: identity, membership state, models and load.

    ``models`` maps model name to served versions; ``capacity`` is the most calls in
    flight the node accepts; ``queue_depth``, ``in_flight`` and ``node_latency_ms`` are as
    the node last reported; ``last_heard`` is on the registry's clock (seconds).
    """

    address: str
    node_id: str
    source: str  # seed | registered | discovered | replica (registered with another)
    state: str = CANDIDATE
    drained: bool = False
    epoch: int = 0
    models: dict[str, tuple[str, ...]] = field(default_factory=dict)
    capacity: int = 8
    processes: int = 1  # serving processes behind the address (edge-node --processes)
    queue_depth: int = 0  # as the node last reported
    in_flight: int = 0
    node_latency_ms: float = 0.0
    outstanding: int = 0  # requests and shards the coordinator has in flight to it
    latency: Ewma = field(default_factory=lambda: Ewma(half_life_s=LATENCY_HALF_LIFE_S))
    """Coordinator-observed call latency (ms), smoothed over time."""
    weight: float = 1.0  # routing weight multiplier (slow nodes get less)
    last_heard: float = 0.0
    last_beat: float = 0.0  # the node's last accepted registration or heartbeat
    shards_done: int = 0
    items_done: int = 0

    @property
    def routable(self) -> bool:
        """True when the node may get new work: live and not drained."""
        return self.state == LIVE and not self.drained

    def serves(self, model: str, version: str = "") -> bool:
        """Whether the node serves ``model`` (at ``version``, when one is given)."""
        versions = self.models.get(model)
        return versions is not None and (not version or version in versions)

    @property
    def latency_ms(self) -> float:
        """Smoothed coordinator-observed call latency in ms; 0.0 before the first call."""
        return self.latency.value or 0.0

    @property
    def display_state(self) -> str:
        """``state``, or ``draining`` for a drained live node."""
        return "draining" if self.drained and self.state == LIVE else self.state


class Registry:
    """Thread-safe membership table with listeners for nodes that die or come alive."""

    def __init__(self, suspect_after: float, dead_after: float,
                 clock: Callable[[], float] = time.monotonic,
                 expire_after: float | None = None):
        self.suspect_after = suspect_after
        self.dead_after = dead_after
        self.expire_after = expire_after  # silence after which a dead node is forgotten
        self.clock = clock
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # notified when a node's load drops
        self._nodes: dict[str, NodeRecord] = {}
        self._epochs = itertools.count(int(time.time() * 1000))
        self.on_dead: list[Callable[[NodeRecord], None]] = []
        self.on_live: list[Callable[[NodeRecord], None]] = []
        self.on_drain: list[Callable[[NodeRecord], None]] = []

    # -- discovery of candidates -----------------------------------------------------------
    def add_candidate(self, address: str, source: str, node_id: str = "",
                      models: dict[str, tuple[str, ...]] | None = None,
                      capacity: int | None = None, processes: int | None = None
                      ) -> NodeRecord:
        """Add (or update) a node at ``address`` as a candidate; returns a copy of its record.

        An existing record keeps its state; it takes ``node_id`` only if it had none yet, and
        ``models`` / ``capacity`` / ``processes`` when given.
        """
        with self._lock:
            rec = self._nodes.get(address)
            if rec is None:
                rec = self._nodes[address] = NodeRecord(address, node_id or address, source)
            elif node_id and rec.node_id == rec.address:
                rec.node_id = node_id
            if models is not None:
                rec.models = dict(models)
            if capacity:
                rec.capacity = capacity
            if processes:
                rec.processes = processes
            return replace(rec)

    def register(self, node_id: str, address: str, models: dict[str, tuple[str, ...]],
                 capacity: int, processes: int = 1) -> int:
        """A node registered itself; returns the epoch its heartbeats must carry."""
        with self._lock:
            rec = self._nodes.get(address)
            if rec is None:
                rec = self._nodes[address] = NodeRecord(address, node_id, "registered")
            rec.node_id = node_id
            rec.models = dict(models)
            rec.capacity = max(1, capacity)
            rec.processes = max(1, processes)
            rec.epoch = next(self._epochs)
            rec.last_beat = self.clock()
            return rec.epoch

    def heartbeat(self, node_id: str, epoch: int, queue_depth: int, in_flight: int,
                  latency_ms: float, capacity: int,
                  models: dict[str, tuple[str, ...]] | None) -> tuple[bool, bool]:
        """Returns (known, drained). Unknown (node_id, epoch) means: register again."""
        with self._lock:
            rec = next((r for r in self._nodes.values()
                        if r.node_id == node_id and r.epoch == epoch), None)
            if rec is None:
                return False, False
            rec.last_beat = self.clock()
            rec.queue_depth, rec.in_flight = queue_depth, in_flight
            rec.node_latency_ms = latency_ms
            if capacity:
                rec.capacity = capacity
            if models:
                rec.models = dict(models)
            if rec.state == LIVE:  # beats keep a node live but never admit it
                rec.last_heard = self.clock()
            return True, rec.drained

    # -- health ----------------------------------------------------------------------------
    def probe_ok(self, address: str, models: dict[str, tuple[str, ...]] | None = None,
                 keep_alive: bool = True) -> None:
        """Record a passed health check of ``address``: heard from now, and live.

        Fires the ``on_live`` listeners when the node was not live before; updates ``models``
        when given. Without ``keep_alive`` only the models are taken (the node must prove
        itself by heartbeats to stay live). Unknown addresses are ignored.
        """
        fire = None
        with self._lock:
            rec = self._nodes.get(address)
            if rec is None:
                return
            if not keep_alive:
                if models is not None:
                    rec.models = dict(models)
                return
            rec.last_heard = self.clock()
            if models is not None:
                rec.models = dict(models)
            if rec.state != LIVE:
                rec.state = LIVE
                fire = replace(rec)
                self._room.notify_all()
        if fire is not None:
            for listener in self.on_live:
                listener(fire)

    def probe_failed(self, address: str) -> None:
        """A health check failed or a request saw UNAVAILABLE: no new work for now."""
        with self._lock:
            rec = self._nodes.get(address)
            if rec is not None and rec.state == LIVE:
                rec.state = SUSPECT

    def sweep(self) -> list[NodeRecord]:
        """Age silent nodes to suspect, then dead; returns nodes that just died.

        A dead node silent for more than ``expire_after`` seconds is forgotten (its record
        removed; it is welcome to register again), except seeds, which stay to be probed.
        """
        now = self.clock()
        died = []
        with self._lock:
            for rec in self._nodes.values():
                if rec.state in (LIVE, SUSPECT):
                    silent = now - rec.last_heard
                    if silent > self.dead_after:
                        rec.state = DEAD
                        died.append(replace(rec))
                    elif silent > self.suspect_after and rec.state == LIVE:
                        rec.state = SUSPECT
        for rec in died:
            for listener in self.on_dead:
                listener(rec)
        return died

    def expire(self) -> list[NodeRecord]:
        """Forget dead nodes (not seeds) silent for more than ``expire_after`` seconds;
        returns them."""
        if self.expire_after is None:
            return []
        now = self.clock()
        with self._lock:
            gone = [rec for rec in self._nodes.values()
                    if rec.state == DEAD and rec.source != "seed"
                    and now - rec.last_heard > self.expire_after]
            for rec in gone:
                del self._nodes[rec.address]
        return gone

    # -- operator actions ------------------------------------------------------------------
    def _find(self, name: str) -> NodeRecord:
        rec = self._nodes.get(name) or next(
            (r for r in self._nodes.values() if r.node_id == name), None)
        if rec is None:
            known = ", ".join(sorted(r.node_id for r in self._nodes.values())) or "none"
            raise UnknownNodeError(f"node_id: no node {name!r} (known: {known})")
        return rec

    def set_drained(self, name: str, drained: bool) -> NodeRecord:
        """Drain (or undrain) the node with that id or address; returns a copy of its record.

        Draining fires the ``on_drain`` listeners; undraining a live node fires the
        ``on_live`` listeners (it may take work again, as if it had just turned live).
        Raises ``UnknownNodeError`` for an unknown node.
        """
        with self._lock:
            rec = self._find(name)
            was_drained, rec.drained = rec.drained, drained
            snap = replace(rec)
            if not drained and was_drained and rec.state == LIVE:
                self._room.notify_all()
        if drained:
            for listener in self.on_drain:
                listener(snap)
        elif was_drained and snap.state == LIVE:
            for listener in self.on_live:
                listener(snap)
        return snap

    # -- routing bookkeeping ---------------------------------------------------------------
    def routable(self, model: str, version: str = "") -> list[NodeRecord]:
        """Copies of the live, undrained nodes that serve ``model`` (at ``version``, if given)."""
        with self._lock:
            return [replace(r) for r in self._nodes.values()
                    if r.routable and r.serves(model, version)]

    def acquire(self, address: str, amount: int = 1) -> None:
        """Count ``amount`` more calls in flight to the node at ``address`` (unknown: ignored)."""
        with self._lock:
            rec = self._nodes.get(address)
            if rec is not None:
                rec.outstanding += amount

    def release(self, address: str, seconds: float | None, amount: int = 1,
                items: int = 0, shard: bool = False) -> None:
        """A call to the node ended; ``seconds`` is its latency (None if it failed)."""
        with self._lock:
            rec = self._nodes.get(address)
            if rec is None:
                return
            rec.outstanding = max(0, rec.outstanding - amount)
            self._room.notify_all()
            if seconds is not None:
                now = self.clock()
                rec.latency.update(seconds * 1000.0, now)
                rec.last_heard = now
                rec.items_done += items
                rec.shards_done += int(shard)

    def wait_for_room(self, timeout: float) -> None:
        """Block until some node's outstanding count drops (or a node turns live), at
        most ``timeout`` seconds."""
        with self._room:
            self._room.wait(timeout)

    def set_weights(self, weights: dict[str, float]) -> None:
        """Routing weights by address; nodes without one (no latency data yet) get 1.0."""
        with self._lock:
            for address, rec in self._nodes.items():
                rec.weight = weights.get(address, 1.0)

    def latencies(self) -> dict[str, float]:
        """Observed latency in ms by address, for routable nodes with a positive latency so far."""
        with self._lock:
            return {r.address: r.latency_ms for r in self._nodes.values()
                    if r.routable and r.latency_ms > 0}

    def get(self, name: str) -> NodeRecord:
        """A copy of the node with that id or address; ``UnknownNodeError`` if there is none."""
        with self._lock:
            return replace(self._find(name))

    def served_models(self) -> list[str]:
        """Every model a known node (live or not) has offered, sorted."""
        with self._lock:
            return sorted({m for r in self._nodes.values() for m in r.models})

    def snapshot(self) -> list[NodeRecord]:
        """Copies of all node records, sorted by node id."""
        with self._lock:
            return [replace(r) for r in sorted(self._nodes.values(), key=lambda r: r.node_id)]

    def addresses(self) -> list[str]:
        """The addresses of all known nodes."""
        with self._lock:
            return list(self._nodes)
