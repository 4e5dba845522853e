"""Keeps the registry honest: probes every known node, ages silent ones, weighs slow ones.

One background thread. Each round health-checks every node in parallel (each probe has
a deadline, so a hung or SIGSTOPped node cannot stall the round), then sweeps the
registry (live -> suspect -> dead by silence) and recomputes slow-node weights with
hysteresis. With a store shared by replicas, each round also publishes the nodes that
registered here and takes those registered with other replicas as candidates.
``register`` and ``discovered`` admit a new node with an immediate health check instead
of waiting for the next round; ``set_drained`` is the operator's switch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from coordinator.fleet.admission import (
    AWAIT_REGISTRATION,
    VERIFY_CERTIFICATE,
    AdmissionPolicy,
    check_node_address,
    check_node_id,
    check_node_report,
)
from coordinator.fleet.rebalance import SlowNodePolicy
from coordinator.fleet.registry import LIVE, NodeRecord, Registry

log = logging.getLogger(__name__)

Probe = Callable[[str, float], dict[str, tuple[str, ...]] | None]
# (address, expected node id, timeout_s) -> served models when the node at ``address``
# is SERVING and its server certificate is for that node id, else None.
VerifyingProbe = Callable[[str, str, float], dict[str, tuple[str, ...]] | None]


@dataclass(frozen=True)
class Member:
    """A node as replicas of a shared store tell each other of it."""

    node_id: str
    address: str
    capacity: int
    processes: int = 1


# share(ours, heard_within_s) -> every node some replica heard within that many seconds.
ShareMembers = Callable[[list[Member], float], list[Member]]


class Membership:
    """Admission and ageing of the registry's nodes.

    ``probe(address, timeout_s)`` health-checks a node and returns the models and
    versions it serves, or None when it is not SERVING; ``interval`` and ``timeout`` are
    seconds. Nodes prove who they are with client certificates when ``certificates``
    and with join tokens while ``join_tokens()`` (``coordinator.fleet.admission``);
    ``verify`` is the probe that also checks a discovered node's server certificate.
    ``own`` holds the coordinator's own addresses, which no node may register.
    """

    def __init__(self, registry: Registry, probe: Probe, interval: float, timeout: float,
                 slow_policy: SlowNodePolicy | None = None,
                 certificates: bool = False, join_tokens: Callable[[], bool] = lambda: False,
                 verify: VerifyingProbe | None = None):
        self.registry = registry
        self._probe = probe
        self._certificates = certificates
        self._join_tokens = join_tokens
        self._verify = verify
        self.own: set[str] = set()
        self._awaiting: set[str] = set()  # discovered ids told to register, logged once
        self.interval = interval
        self.timeout = timeout
        self.slow_policy = slow_policy or SlowNodePolicy()
        # Where operator drains are kept, if anywhere (the job store: shared by replicas):
        # record(node, drained) and the recorded set, applied every round.
        self.record_drain: Callable[[str, bool], None] | None = None
        self.recorded_drains: Callable[[], set[str]] | None = None
        # With a store shared by replicas: publish the nodes registered here and learn
        # those registered with the others (``coordinator.jobs.members``), every round.
        self.share_members: ShareMembers | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="membership", daemon=True)

    @property
    def admission(self) -> AdmissionPolicy:
        """How nodes must prove their identity now (join tokens may come and go with the
        token file)."""
        return AdmissionPolicy(self._certificates, self._join_tokens())

    def start(self) -> None:
        """Start the probe-and-sweep thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (waits for the current round) and the probe pool."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(self.interval + self.timeout + 1)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def probe_now(self, address: str, keep_alive: bool = True) -> bool:
        """Probe one node at once; True if it passed. Without ``keep_alive`` a pass only
        refreshes the node's models (see ``run_round``)."""
        models = self._probe(address, self.timeout)
        if models is None:
            self.registry.probe_failed(address)
            return False
        self.registry.probe_ok(address, models, keep_alive)
        return True

    def _probe_keeps_alive(self, rec: NodeRecord, now: float) -> bool:
        """Whether a passed probe keeps ``rec`` live. When nodes must prove who they are, a
        registered node must also have been heard proving it (an accepted heartbeat)
        within ``suspect_after``: a node whose join token was revoked, still answering
        health checks, leaves the fleet."""
        if self.admission.open or rec.source != "registered":
            return True
        return now - rec.last_beat <= self.registry.suspect_after

    def register(self, node_id: str, address: str, models: dict[str, tuple[str, ...]],
                 capacity: int, processes: int = 1) -> int:
        """A node (whose identity the caller checked) registered itself: record it, admit
        it if a health check passes now, and return the epoch its heartbeats must carry.
        ``InvalidRequestError`` for a missing or malformed id, or an address that cannot
        be dialled (wildcard, no port, the coordinator's own)."""
        check_node_id(node_id)
        check_node_address(address, self.own)
        check_node_report(models, capacity, processes=processes)
        epoch = self.registry.register(node_id, address, models, capacity, processes)
        admitted = self.probe_now(address)  # admission = a health check
        log.info("node %s registered from %s (epoch %d, %s)", node_id, address, epoch,
                 "admitted" if admitted else "not yet healthy")
        return epoch

    def heartbeat(self, node_id: str, epoch: int, queue_depth: int, in_flight: int,
                  latency_ms: float, capacity: int,
                  models: dict[str, tuple[str, ...]] | None) -> tuple[bool, bool]:
        """A node's heartbeat, checked (``InvalidRequestError`` naming the field) and
        recorded; returns ``(known, drained)`` (unknown: it must register again)."""
        check_node_id(node_id)
        check_node_report(models or {}, capacity, latency_ms)
        return self.registry.heartbeat(node_id, epoch, queue_depth, in_flight, latency_ms,
                                       capacity, models)

    def discovered(self, addresses: list[str], node_id: str, capacity: int) -> bool:
        """A node advertised itself at ``addresses`` (``host:port`` each): the first that
        passes a health check (and, with certificates, proves it is ``node_id``) is
        admitted; True if one did. With join tokens only, nothing is admitted: the node
        must register with its token."""
        way = self.admission.discovery()
        if way == AWAIT_REGISTRATION:
            if node_id not in self._awaiting:
                self._awaiting.add(node_id)
                log.info("discovered node %s at %s: not admitted until it registers with "
                         "its join token", node_id, ", ".join(addresses))
            return False
        if way == VERIFY_CERTIFICATE:
            return self._discovered_verified(addresses, node_id, capacity)
        for address in addresses:
            self.registry.add_candidate(address, "discovered", node_id=node_id,
                                        capacity=capacity)
            if self.probe_now(address):
                log.info("discovered node %s at %s", node_id, address)
                return True
        return False

    def _discovered_verified(self, addresses: list[str], node_id: str, capacity: int) -> bool:
        for address in addresses:
            if address in self.own:
                continue
            models = self._verify(address, node_id, self.timeout) if self._verify else None
            if models is None:
                log.warning("discovered node %s at %s: not admitted (not serving, or its "
                            "certificate is not the fleet CA's for %r)", node_id, address,
                            node_id)
                continue
            self.registry.add_candidate(address, "discovered", node_id=node_id,
                                        capacity=capacity)
            self.registry.probe_ok(address, models)
            log.info("discovered node %s at %s (certificate verified)", node_id, address)
            return True
        return False

    def set_drained(self, node: str, drained: bool) -> NodeRecord:
        """An operator drains (or undrains) ``node`` (id or address); recorded first where
        drains are kept, so every coordinator of the store applies it."""
        rec = self.registry.get(node)  # UnknownNodeError before anything is recorded
        if self.record_drain is not None:
            if not drained:  # it may have been recorded under its address before it registered
                self.record_drain(rec.address, False)
            self.record_drain(rec.node_id, drained)
        rec = self.registry.set_drained(node, drained)
        log.info("node %s %s by an operator", rec.node_id, "drained" if drained else "undrained")
        return rec

    def apply_drains(self, drained: set[str]) -> None:
        """Make the registry's drain flags match the recorded ``drained`` ids/addresses
        (drains made through another coordinator, or before a restart)."""
        for rec in self.registry.snapshot():
            want = rec.node_id in drained or rec.address in drained
            if want != rec.drained:
                self.registry.set_drained(rec.address, want)
                log.info("node %s %s (recorded in the job store)", rec.node_id,
                         "drained" if want else "undrained")

    def run_round(self) -> None:
        """Probe every known node once, age the silent ones, update routing weights."""
        if self.recorded_drains is not None:
            try:
                self.apply_drains(self.recorded_drains())
            except Exception as exc:  # noqa: BLE001 - a store fault must not stop probing
                log.debug("recorded drains unavailable: %s", exc)
        if self.share_members is not None:
            try:
                self._share()
            except Exception as exc:  # noqa: BLE001 - a store fault must not stop probing
                log.debug("shared membership unavailable: %s", exc)
        now = self.registry.clock()
        futures = [self._pool.submit(self.probe_now, rec.address,
                                     self._probe_keeps_alive(rec, now))
                   for rec in self.registry.snapshot()]
        for f in futures:
            try:
                f.result(self.timeout + 1)
            except Exception:  # noqa: BLE001 - one bad probe must not end the loop
                log.exception("probe failed unexpectedly")
        for rec in self.registry.sweep():
            log.warning("node %s (%s) is dead: silent for more than %.1fs",
                        rec.node_id, rec.address, self.registry.dead_after)
        for rec in self.registry.expire():
            log.info("node %s (%s) forgotten: dead and silent for more than %.0fs",
                     rec.node_id, rec.address, self.registry.expire_after)
        weights = self.slow_policy.update(self.registry.latencies(), time.monotonic())
        self.registry.set_weights(weights)

    def _share(self) -> None:
        """Publish the live nodes registered here; add those other replicas heard (within
        ``suspect_after``) as candidates, for this round's health checks to admit."""
        ours = [Member(r.node_id, r.address, r.capacity, r.processes)
                for r in self.registry.snapshot() if r.source == "registered" and r.state == LIVE]
        known = {r.address for r in self.registry.snapshot()}
        for m in self.share_members(ours, self.registry.suspect_after):
            if m.address not in known and m.address not in self.own:
                self.registry.add_candidate(m.address, "replica", node_id=m.node_id,
                                            capacity=m.capacity, processes=m.processes)
                log.info("node %s at %s: registered with another replica; probing it",
                         m.node_id, m.address)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_round()
            except Exception:  # noqa: BLE001
                log.exception("membership round failed")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
