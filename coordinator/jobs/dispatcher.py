"""Sharded jobs over the fleet: nodes with room pull shards (work stealing).

Every live, undrained node gets ``shards_per_node`` puller threads. A puller leases the
next queued shard for a model its node serves, runs it as one batched request with a
deadline, and commits the results; each item keeps the first result committed for it,
so a late duplicate is discarded by the store. The node's share of the job therefore
follows its speed, and a node that joins mid-job starts pulling at once.

Failure behaviour: a call that fails (UNAVAILABLE) or misses its deadline (a hung or
SIGSTOPped node) releases the shard back to the queue and marks the node suspect, so
the shard goes to another node; a node that dies or is drained has every shard it holds
re-queued; a lease older than ``lease_s`` is re-queued by the sweeper whatever the
reason. A shard that fails ``max_failures`` times fails its job with the last error;
results the store refuses (``InvalidResultError``) count as such a failure. A store
error is logged and the puller tries again after ``STORE_RETRY_S``: it never ends a
puller (the shard it held comes back when its lease expires).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from coordinator.errors import (
    InvalidResultError,
    StoreFullError,
    StoreUnavailableError,
    UnknownNodeError,
)
from coordinator.fleet.registry import NodeRecord, Registry
from coordinator.jobs.model import Lease, NextLease
from coordinator.jobs.runner import ShardOutput
from coordinator.jobs.spool import SpoolLimits
from coordinator.jobs.store import JobStore
from edgeshard.errors import PeerStatusError

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.25
STORE_RETRY_S = 1.0  # pause after a store error before a puller tries again
MAX_STORE_RETRY_S = 8.0  # the pause doubles while the store keeps failing, up to this


# run_shard(node, lease) -> ShardOutput; raises PeerStatusError when the node fails it.
RunShard = Callable[[NodeRecord, Lease], ShardOutput]


class Dispatcher:
    """Per-node shard pullers over one job store, plus the expired-lease sweeper.

    ``run_shard(node, lease)`` runs a shard (``ShardRunner``); ``lease_s`` is the lease
    length in seconds; ``on_commit(node_id, accepted, duplicates)`` is a metrics hook;
    ``on_job_change(job_id)`` is told after each shard of the job ran (its followers look).
    """

    def __init__(self, store: JobStore, registry: Registry, run_shard: RunShard,
                 shards_per_node: int = 2, lease_s: float = 15.0,
                 on_commit: Callable[[str, int, int], None] | None = None,
                 spool_limits: SpoolLimits | None = None, address: str = "",
                 replica_timeout_s: float = 5.0,
                 on_job_change: Callable[[str], None] = lambda job_id: None):
        self.store = store
        self.on_job_change = on_job_change  # a job's results or state may have changed
        self.registry = registry
        self.run_shard = run_shard
        self.shards_per_node = shards_per_node
        self.lease_s = lease_s
        self.on_commit = on_commit  # metrics hook: (node_id, accepted, duplicates)
        self.spool_limits = spool_limits
        self.address = address  # this coordinator's, in the replicas table
        self.replica_timeout_s = replica_timeout_s
        self._cond = threading.Condition()
        self._pullers: dict[str, list[threading.Thread]] = {}
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="shard-sweeper", daemon=True)
        self._wake = threading.Event()  # the sweeper has nodes to hand back
        self._gone: dict[str, NodeRecord] = {}
        self._gone_lock = threading.Lock()
        self.requeued = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Re-queue the previous process's leases, follow membership, start pulling.

        On a shared store this replica first says it is alive, so that no other replica
        takes its leases for a dead one's."""
        if self.store.shared:
            self.store.heartbeat(self.address)
        recovered = self.store.recover()
        if recovered:
            log.info("re-queued %d shard(s) leased before the restart", recovered)
        self.registry.on_live.append(self.node_live)
        self.registry.on_dead.append(self.node_gone)
        self.registry.on_drain.append(self.node_gone)
        for rec in self.registry.snapshot():
            if rec.routable:
                self.node_live(rec)
        self._sweeper.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop pulling and sweeping; waits up to ``timeout`` seconds for the threads."""
        self._stop.set()
        self._wake.set()
        self.notify()
        deadline = time.monotonic() + timeout
        for threads in list(self._pullers.values()):
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
        if self._sweeper.ident is not None:  # started
            self._sweeper.join(max(0.0, deadline - time.monotonic()))

    def notify(self) -> None:
        """Wake idle pullers: a job arrived or shards were re-queued."""
        with self._cond:
            self._cond.notify_all()

    # -- membership events -----------------------------------------------------------------
    def node_live(self, rec: NodeRecord) -> None:
        """Start this node's pullers (up to ``shards_per_node``); membership calls it."""
        with self._cond:
            alive = [t for t in self._pullers.get(rec.address, []) if t.is_alive()]
            for i in range(len(alive), self.shards_per_node):
                t = threading.Thread(target=self._pull, args=(rec.address,),
                                     name=f"pull-{rec.node_id}-{i}", daemon=True)
                t.start()
                alive.append(t)
            self._pullers[rec.address] = alive

    def node_gone(self, rec: NodeRecord) -> None:
        """The node died or was drained: the sweeper thread re-queues every shard it holds
        at once and wakes the pullers (membership, which calls this, never waits for the
        store; a re-queue the store refuses is tried again)."""
        with self._gone_lock:
            self._gone[rec.address] = rec
        self._wake.set()

    def _requeue_gone(self) -> None:
        with self._gone_lock:
            gone, self._gone = self._gone, {}
        for address, rec in gone.items():
            try:
                n = self.store.requeue_node(address)
            except Exception:
                with self._gone_lock:
                    self._gone.setdefault(address, rec)  # the next round tries again
                raise
            if n:
                self.requeued += n
                log.warning("re-queued %d shard(s) held by %s (%s)", n, rec.node_id,
                            "drained" if rec.drained else rec.state)
        if gone:
            self.notify()

    # -- work ------------------------------------------------------------------------------
    def _pull(self, address: str) -> None:
        lease = None  # the next shard, leased when the last one was committed
        backoff = STORE_RETRY_S
        while not self._stop.is_set():
            try:
                rec = self.registry.get(address)
            except UnknownNodeError:  # the node left the registry
                return
            if not rec.routable:
                if lease is not None:  # not this node's any more (a no-op if re-queued)
                    try:
                        if self.store.release(lease.shard_id, lease.attempt, "node not live",
                                              counts_as_failure=False):
                            self.requeued += 1
                    except Exception:  # noqa: BLE001 - the lease expires and comes back
                        log.info("shard %d stays leased to %s until its lease expires",
                                 lease.shard_id, rec.node_id)
                    self.notify()
                return  # node_live starts new pullers if it comes back
            try:
                if lease is None:
                    lease = self.store.lease_next(address, self.lease_s, time.time(),
                                                  models=set(rec.models))
                if lease is not None:
                    lease = self._run(rec, lease)
                    backoff = STORE_RETRY_S
                    continue
            except (StoreFullError, StoreUnavailableError):
                # The store logs the fault once; its shard comes back when the lease expires.
                lease = None
                self._stop.wait(backoff)
                backoff = min(2 * backoff, MAX_STORE_RETRY_S)
                continue
            except Exception:  # noqa: BLE001 - a store error must not end the puller
                log.exception("puller for %s: store error; retrying", rec.node_id)
                lease = None  # a lease taken meanwhile comes back when it expires
                self._stop.wait(STORE_RETRY_S)
                continue
            with self._cond:
                self._cond.wait(IDLE_WAIT_S)

    def _run(self, rec: NodeRecord, lease: Lease) -> Lease | None:
        """Run ``lease`` on the node and commit its results; the node's next lease, taken
        in the same transaction, or None (nothing queued, or the shard failed)."""
        try:
            return self._run_and_commit(rec, lease)
        finally:
            self.on_job_change(lease.job_id)  # results, a re-queue, or a failed job

    def _run_and_commit(self, rec: NodeRecord, lease: Lease) -> Lease | None:
        try:
            output = self.run_shard(rec, lease)
        except PeerStatusError as exc:
            # A node that died or hung (a retryable status) is not the shard's fault: the
            # node is suspect and only the shard's own errors (e.g. INVALID_ARGUMENT)
            # count towards failing the job.
            if exc.retryable:
                self.registry.probe_failed(rec.address)
            if self.store.release(lease.shard_id, lease.attempt,
                                  f"{rec.node_id}: {exc.summary}",
                                  counts_as_failure=not exc.retryable):
                self.requeued += 1
            self.notify()
            return None
        except Exception as exc:  # noqa: BLE001 - never lose the shard on a bug
            log.exception("shard %d on %s failed unexpectedly", lease.shard_id, rec.node_id)
            self.store.release(lease.shard_id, lease.attempt, f"internal error: {exc}")
            self.notify()
            return None
        try:
            outcome = self.store.complete(lease.shard_id, lease.attempt, output.results,
                                          escalations=output.escalations,
                                          spool_limits=self.spool_limits,
                                          then_lease=NextLease(rec.address, self.lease_s,
                                                               set(rec.models)))
        except InvalidResultError as exc:
            # The node's answer is unusable (e.g. a NaN confidence): that counts against
            # the shard like any error status of the node.
            log.warning("shard %d from %s: results refused: %s", lease.shard_id,
                        rec.node_id, exc)
            self.store.release(lease.shard_id, lease.attempt, f"{rec.node_id}: {exc}")
            self.notify()
            return None
        if self.on_commit is not None:
            self.on_commit(rec.node_id, outcome.accepted, outcome.duplicates)
        if outcome.duplicates:
            log.info("shard %d from %s: %d late duplicate result(s) discarded",
                     lease.shard_id, rec.node_id, outcome.duplicates)
        return outcome.next_lease

    def _sweep(self) -> None:
        """At once: hand back the shards of nodes that left. Every 0.5 s: heartbeat (shared
        store); and, while this process owns the duty, re-queue expired leases and those
        of replicas that died."""
        due = time.monotonic() + 0.5
        while not self._stop.is_set():
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._requeue_gone()
            except (StoreFullError, StoreUnavailableError):
                pass  # logged once by the store; tried again below or at the next wake
            except Exception:  # noqa: BLE001
                log.exception("re-queueing a departed node's shards failed; retrying")
            if time.monotonic() < due:
                continue
            due = time.monotonic() + 0.5
            now = time.time()
            try:
                if self.store.shared:
                    self.store.heartbeat(self.address)
                if not self.store.owns("lease-sweeper"):
                    continue
                expired = self.store.requeue_expired(now)
                if self.store.shared:
                    expired += self.store.requeue_orphans(self.replica_timeout_s)
            except (StoreFullError, StoreUnavailableError):
                continue  # logged once by the store; the sweep runs again in 0.5 s
            except Exception:  # noqa: BLE001
                log.exception("lease sweep failed")
                continue
            if expired:
                self.requeued += len(expired)
                log.warning("re-queued %d shard(s) whose lease expired or whose coordinator "
                            "replica stopped", len(expired))
                self.notify()
