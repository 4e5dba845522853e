"""Keeps the registry honest: probes every known node, ages silent ones, weighs slow ones.

One background thread. Each round health-checks every node in parallel (each probe has
a deadline, so a hung or SIGSTOPped node cannot stall the round), then sweeps the
registry (live -> suspect -> dead by silence) and recomputes slow-node weights with
hysteresis. ``probe_now`` admits a newly registered or discovered node without waiting
for the next round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from coordinator.rebalance import SlowNodePolicy
from coordinator.registry import Registry

log = logging.getLogger(__name__)

Probe = Callable[[str, float], dict[str, tuple[str, ...]] | None]


class Membership:
    def __init__(self, registry: Registry, probe: Probe, interval: float, timeout: float,
                 slow_policy: SlowNodePolicy | None = None):
        self.registry = registry
        self._probe = probe
        self.interval = interval
        self.timeout = timeout
        self.slow_policy = slow_policy or SlowNodePolicy()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="membership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
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

    def run_round(self) -> None:
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
