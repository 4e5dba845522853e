"""Keeps the registry honest: probes every known node, ages silent ones, weighs slow ones.

One background thread. Each round health-checks every node in parallel (each probe has
a deadline, so a hung or SIGSTOPped node cannot stall the round), then sweeps the
registry (live -> suspect -> dead by silence) and recomputes slow-node weights with
hysteresis. ``register`` and ``discovered`` admit a new node with an immediate health
check instead of waiting for the next round; ``set_drained`` is the operator's switch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from coordinator.errors import InvalidRequestError
from coordinator.fleet.rebalance import SlowNodePolicy
from coordinator.fleet.registry import NodeRecord, Registry

log = logging.getLogger(__name__)

Probe = Callable[[str, float], dict[str, tuple[str, ...]] | None]


class Membership:
    """Admission and ageing of the registry's nodes.

    ``probe(address, timeout_s)`` health-checks a node and returns the models and
    versions it serves, or None when it is not SERVING; ``interval`` and ``timeout`` are
    seconds.
    """

    def __init__(self, registry: Registry, probe: Probe, interval: float, timeout: float,
                 slow_policy: SlowNodePolicy | None = None):
        self.registry = registry
        self._probe = probe
        self.interval = interval
        self.timeout = timeout
        self.slow_policy = slow_policy or SlowNodePolicy()
        # Where operator drains are kept, if anywhere (the job store: shared by replicas):
        # record(node, drained) and the recorded set, applied every round.
        self.record_drain: Callable[[str, bool], None] | None = None
        self.recorded_drains: Callable[[], set[str]] | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="membership", daemon=True)

    def start(self) -> None:
        """Start the probe-and-sweep thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (waits for the current round) and the probe pool."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(self.interval + self.timeout + 1)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def probe_now(self, address: str) -> bool:
        """Probe one node at once; True if it is (now) live."""
        models = self._probe(address, self.timeout)
        if models is None:
            self.registry.probe_failed(address)
            return False
        self.registry.probe_ok(address, models)
        return True

    def register(self, node_id: str, address: str, models: dict[str, tuple[str, ...]],
                 capacity: int) -> int:
        """A node registered itself: record it, admit it if a health check passes now,
        and return the epoch its heartbeats must carry. ``InvalidRequestError`` when the
        id or address is missing."""
        if not node_id or not address:
            raise InvalidRequestError("node_id and address: both are required to register")
        epoch = self.registry.register(node_id, address, models, capacity)
        admitted = self.probe_now(address)  # admission = a health check
        log.info("node %s registered from %s (epoch %d, %s)", node_id, address, epoch,
                 "admitted" if admitted else "not yet healthy")
        return epoch

    def discovered(self, addresses: list[str], node_id: str, capacity: int) -> bool:
        """A node advertised itself at ``addresses`` (``host:port`` each): the first that
        passes a health check is admitted; True if one did."""
        for address in addresses:
            self.registry.add_candidate(address, "discovered", node_id=node_id,
                                        capacity=capacity)
            if self.probe_now(address):
                log.info("discovered node %s at %s", node_id, address)
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
        addresses = self.registry.addresses()
        futures = [self._pool.submit(self.probe_now, a) for a in addresses]
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

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_round()
            except Exception:  # noqa: BLE001
                log.exception("membership round failed")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
