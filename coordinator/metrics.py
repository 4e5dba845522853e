"""Prometheus metrics of the coordinator (one registry per coordinator instance), and the
loop that refreshes its gauges: every second from the fleet, the dispatcher and the cloud
tier, every ``JOB_GAUGES_EVERY`` seconds from the job store."""

from __future__ import annotations

import collections
import logging
import threading

from prometheus_client import Counter, Gauge, Histogram

from edgeshard.prometheus import MetricsEndpoint

log = logging.getLogger(__name__)


class CoordinatorMetrics(MetricsEndpoint):
    """The coordinator's Prometheus metrics in a registry of its own, and their HTTP endpoint."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.forwarded = Counter(
            "edgeshard_coordinator_forwarded", "Online requests forwarded, by node and status",
            ["node", "code"], registry=r)
        self.forward_seconds = Histogram(
            "edgeshard_coordinator_forward_seconds", "Latency of forwarded requests by node",
            ["node"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.nodes = Gauge("edgeshard_coordinator_nodes", "Known nodes by state", ["state"],
                           registry=r)
        self.items = Counter("edgeshard_coordinator_job_items",
                             "Job results committed, by node", ["node"], registry=r)
        self.duplicates = Counter("edgeshard_coordinator_job_duplicates",
                                  "Late duplicate job results discarded", registry=r)
        self.jobs = Gauge("edgeshard_coordinator_jobs",
                          "Jobs in the job store by state (running, done, cancelled, failed)",
                          ["state"], registry=r)
        self.job_items_remaining = Gauge(
            "edgeshard_coordinator_job_items_remaining",
            "Items of running jobs without a result yet (job progress: falls to 0)",
            registry=r)
        self.requeued = Gauge("edgeshard_coordinator_shards_requeued",
                              "Shards re-queued since start (dead, drained, late)", registry=r)
        self.in_flight = Gauge("edgeshard_coordinator_in_flight",
                               "Online requests in flight", registry=r)
        self.escalations = Counter(
            "edgeshard_coordinator_escalation_items",
            "Cascade decisions per item: accepted (edge sure), answered (cloud), unanswered",
            ["model", "outcome"], registry=r)
        self.cloud_calls = Counter("edgeshard_coordinator_cloud_calls",
                                   "Calls to the cloud tier by outcome", ["model", "outcome"],
                                   registry=r)
        self.cloud_items = Counter("edgeshard_coordinator_cloud_items",
                                   "Items sent to the cloud tier by outcome",
                                   ["model", "outcome"], registry=r)
        self.cloud_seconds = Histogram("edgeshard_coordinator_cloud_seconds",
                                       "Latency of cloud calls", ["model"], registry=r)
        self.cloud_cost = Gauge("edgeshard_coordinator_cloud_cost",
                                "Cost of cloud calls since start (configured unit)",
                                registry=r)
        self.spool_items = Gauge("edgeshard_coordinator_spool_items",
                                 "Escalations waiting in the spool", registry=r)
        self.spool_bytes = Gauge("edgeshard_coordinator_spool_bytes",
                                 "Payload bytes in the spool", registry=r)
        self.breaker_open = Gauge("edgeshard_coordinator_cloud_breaker_open",
                                  "1 while the cloud circuit breaker is open", registry=r)
        self.store_fault = Gauge("edgeshard_coordinator_store_fault",
                                 "1 while the job store cannot write (disk full, I/O error)",
                                 registry=r)
        self.followers = Gauge(
            "edgeshard_coordinator_job_followers",
            "Open Watch and FetchResults(follow) streams (they hold no thread)", registry=r)
        self.node_in_flight = Gauge(
            "edgeshard_coordinator_node_in_flight",
            "Requests and shards the coordinator has outstanding at each node", ["node"],
            registry=r)
        self.node_queue_depth = Gauge(
            "edgeshard_coordinator_node_queue_depth",
            "Each node's queue depth as its last heartbeat reported", ["node"], registry=r)
        self.node_latency = Gauge(
            "edgeshard_coordinator_node_latency_seconds",
            "Smoothed (EWMA) latency of each node as the coordinator measures it", ["node"],
            registry=r)
        self.node_weight = Gauge(
            "edgeshard_coordinator_node_weight",
            "Routing weight of each node (1: full share; slow nodes get less)", ["node"],
            registry=r)
        self._reported: set[str] = set()  # nodes with per-node series
        self.auth_denied = Counter(
            "edgeshard_coordinator_auth_denied",
            "Calls refused for their credentials, by gRPC code (UNAUTHENTICATED, "
            "PERMISSION_DENIED) and method", ["code", "method"], registry=r)

        self.rollout_state = Gauge(
            "edgeshard_coordinator_rollout_state",
            "1 for each model's rollout state (running, promoted, rolled_back), 0 for the "
            "others", ["model", "state"], registry=r)
        self.rollout_share = Gauge(
            "edgeshard_coordinator_rollout_canary_share",
            "Share of unpinned traffic sent to each model's canary (0 once decided)",
            ["model"], registry=r)
        self.rollout_requests = Counter(
            "edgeshard_coordinator_rollout_requests",
            "Online requests and job shards counted in a rollout, by model, version, arm "
            "(stable, canary) and outcome (ok, error)", ["model", "version", "arm", "outcome"],
            registry=r)
        self.shadow_requests = Counter(
            "edgeshard_coordinator_rollout_shadow_requests",
            "Requests mirrored to a canary, by outcome: agreed or disagreed with stable's "
            "top-1 label, failed, dropped (no free slot)", ["model", "outcome"], registry=r)
        self.rollout_decisions = Counter(
            "edgeshard_coordinator_rollout_decisions",
            "Rollouts decided on this coordinator, by decision (promoted, rolled_back)",
            ["model", "decision"], registry=r)

        self._drift_metrics(r)
        # Audit sampling and edge/cloud agreement (docs/CASCADE.md).
        self.audit_items = Counter(
            "edgeshard_coordinator_audit_items",
            "Confident items picked for audit at the cloud, by outcome: compared, or dropped "
            "(queue_full, budget, breaker_open, busy, failed, refused)", ["model", "outcome"],
            registry=r)
        agreement_labels = ["model", "version", "segment", "source"]
        self.agreement = Gauge(
            "edgeshard_coordinator_cloud_agreement",
            "Share of the last compared items whose edge label is the cloud's, by edge model "
            "version, segment and source (audit, escalated); set from the minimum sample on",
            agreement_labels, registry=r)
        self.agreement_low = Gauge(
            "edgeshard_coordinator_cloud_agreement_low",
            "1 while edge/cloud agreement is below --agreement-warn", agreement_labels,
            registry=r)
        self.hard_examples = Counter(
            "edgeshard_coordinator_hard_examples",
            "Escalated and audited items with the cloud's answer, by outcome: stored in the "
            "job store for export-examples, or dropped (writer full, store error)",
            ["model", "outcome"], registry=r)

    def rollout_changed(self, rollout) -> None:
        """Set a model's rollout gauges from its record (``coordinator.rollout`` Rollout)."""
        for state in ("running", "promoted", "rolled_back"):
            self.rollout_state.labels(rollout.model, state).set(int(rollout.state == state))
        self.rollout_share.labels(rollout.model).set(rollout.share if rollout.running else 0)

    def rollout_decided(self, rollout) -> None:
        """Count a decision (promoted, rolled_back) made on this coordinator."""
        self.rollout_decisions.labels(rollout.model, rollout.state).inc()

    def rollout_request(self, model: str, version: str, arm: str, outcome: str) -> None:
        """Count a request or shard of ``model`` at ``version`` in ``arm``."""
        self.rollout_requests.labels(model, version, arm, outcome).inc()

    def shadow_outcome(self, model: str, outcome: str) -> None:
        """Count a mirrored request by ``outcome``."""
        self.shadow_requests.labels(model, outcome).inc()

    def audit_outcome(self, model: str, outcome: str, items: int) -> None:
        """Count ``items`` audited items of ``model`` by ``outcome``."""
        self.audit_items.labels(model, outcome).inc(items)

    def agreement_stat(self, stat) -> None:
        """Set the agreement gauges of a ``coordinator.monitoring.agreement`` stat."""
        key = tuple(stat.key)
        if stat.fraction is not None:
            self.agreement.labels(*key).set(stat.fraction)
        self.agreement_low.labels(*key).set(int(stat.low))

    def hard_example(self, model: str, outcome: str, items: int) -> None:
        """Count ``items`` hard examples of ``model`` stored or dropped."""
        self.hard_examples.labels(model, outcome).inc(items)

    def denied(self, method: str, code: str) -> None:
        """Count a call to ``method`` refused with ``code`` for its credentials."""
        self.auth_denied.labels(code, method.rsplit("/", 1)[-1]).inc()

    def decision(self, model: str, outcome: str, items: int) -> None:
        """Count ``items`` cascade decisions of ``outcome`` (accepted, answered, unanswered)."""
        self.escalations.labels(model, outcome).inc(items)

    def cloud_call(self, model: str, outcome: str, items: int, seconds: float) -> None:
        """Count a cloud call and its ``items`` by outcome; time (``seconds``) answered ones."""
        self.cloud_calls.labels(model, outcome).inc()
        self.cloud_items.labels(model, outcome).inc(items)
        if outcome == "answered":
            self.cloud_seconds.labels(model).observe(seconds)

    def forwarded_result(self, node: str, code: str, seconds: float) -> None:
        """Count an online request forwarded to ``node`` by status; time (``seconds``) OK ones."""
        self.forwarded.labels(node, code).inc()
        if code == "OK":
            self.forward_seconds.labels(node).observe(seconds)

    def committed(self, node: str, accepted: int, duplicates: int) -> None:
        """Count ``accepted`` job results committed from ``node`` and ``duplicates`` discarded."""
        self.items.labels(node).inc(accepted)
        if duplicates:
            self.duplicates.inc(duplicates)

    def fleet_load(self, nodes) -> None:
        """Set the per-node gauges from a registry snapshot (``NodeRecord``s); nodes no
        longer known lose their series."""
        gauges = (self.node_in_flight, self.node_queue_depth, self.node_latency,
                  self.node_weight)
        known = set()
        for rec in nodes:
            known.add(rec.node_id)
            self.node_in_flight.labels(rec.node_id).set(rec.outstanding)
            self.node_queue_depth.labels(rec.node_id).set(rec.queue_depth)
            self.node_latency.labels(rec.node_id).set(rec.latency_ms / 1000.0)
            self.node_weight.labels(rec.node_id).set(rec.weight)
        for node in self._reported - known:
            for gauge in gauges:
                gauge.remove(node)
        self._reported = known

    # -- drift and segments (coordinator.monitoring) -------------------------------------
    def _drift_metrics(self, r) -> None:
        labels = ["model", "version", "segment"]
        self.drift_psi = Gauge(
            "edgeshard_coordinator_drift_psi",
            "Population stability index of each drift window against its model version's "
            "reference profile, by feature (input, confidence)", [*labels, "feature"],
            registry=r)
        self.drift_ks = Gauge(
            "edgeshard_coordinator_drift_ks",
            "Kolmogorov-Smirnov statistic of each drift window against its reference, by "
            "feature (input, confidence)", [*labels, "feature"], registry=r)
        self.drift_mean_shift = Gauge(
            "edgeshard_coordinator_drift_mean_shift",
            "Shift of each input channel's mean in a drift window, in reference standard "
            "deviations", [*labels, "channel"], registry=r)
        self.drift_items = Gauge(
            "edgeshard_coordinator_drift_window_items",
            "Items in each drift window, summed over the nodes", labels, registry=r)
        self.drift_alert = Gauge(
            "edgeshard_coordinator_drift_alert",
            "1 while a drift window is over --drift-psi-warn or --drift-ks-warn", labels,
            registry=r)
        self.drift_unprofiled = Gauge(
            "edgeshard_coordinator_drift_unprofiled",
            "1 for a model version served without a reference profile (no drift computed)",
            ["model", "version"], registry=r)
        self.segment_requests = Counter(
            "edgeshard_coordinator_segment_requests",
            "Online requests by model, segment parameter and outcome (ok, error)",
            ["model", "segment", "outcome"], registry=r)
        self.segment_items = Counter(
            "edgeshard_coordinator_segment_items",
            "Items answered online by model and segment parameter", ["model", "segment"],
            registry=r)
        self.segment_escalated = Counter(
            "edgeshard_coordinator_segment_escalated_items",
            "Items the cascade escalated to the cloud tier, by model and segment parameter",
            ["model", "segment"], registry=r)

    def drift_reading(self, model: str, version: str, segment: str, reading) -> None:
        """Set a window's drift gauges from its ``coordinator.monitoring.drift.Reading``
        (PSI, KS and mean shift only once the window is judged)."""
        key = (model, version, segment)
        self.drift_items.labels(*key).set(reading.items)
        self.drift_alert.labels(*key).set(int(reading.drifted))
        if not reading.judged:
            return
        for feature, value in reading.psi.items():
            self.drift_psi.labels(*key, feature).set(value)
        for feature, value in reading.ks.items():
            self.drift_ks.labels(*key, feature).set(value)
        for channel, value in enumerate(reading.mean_shift):
            self.drift_mean_shift.labels(*key, str(channel)).set(value)

    def forget_versions(self, served: set[tuple[str, str]]) -> None:
        """Remove the per-version series (drift, agreement) of every model version not in
        ``served`` (``(model, version)`` pairs some known node serves): a version rolled
        back or unloaded leaves no last value, and no firing alert, behind. A version that
        comes back gets its series again with its next reading."""
        for gauge in (self.drift_psi, self.drift_ks, self.drift_mean_shift, self.drift_items,
                      self.drift_alert, self.drift_unprofiled, self.agreement,
                      self.agreement_low):
            for labels in _label_values(gauge):
                if labels[:2] not in served:
                    gauge.remove(*labels)

    def drift_unprofiled_version(self, model: str, version: str) -> None:
        """Mark a model version served without a reference profile."""
        self.drift_unprofiled.labels(model, version).set(1)

    def segment_result(self, model: str, segment: str, outcome: str, items: int = 0,
                       escalated: int = 0) -> None:
        """Count an online request of ``segment`` (a bounded label value) by outcome, its
        answered ``items`` and the ``escalated`` ones."""
        self.segment_requests.labels(model, segment, outcome).inc()
        if items:
            self.segment_items.labels(model, segment).inc(items)
            self.segment_escalated.labels(model, segment).inc(escalated)

def _label_values(gauge: Gauge) -> list[tuple[str, ...]]:
    """The label values of each series ``gauge`` has now, in its label names' order."""
    return [tuple(sample.labels.values()) for metric in gauge.collect()
            for sample in metric.samples]


JOB_GAUGES_EVERY = 5  # seconds between reads of the job store's totals
NODE_STATES = ("candidate", "live", "suspect", "dead", "draining")
JOB_STATES = ("running", "done", "cancelled", "failed")


class GaugeLoop:
    """Sets ``metrics``' gauges from the coordinator's parts until ``stopping`` is set.
    ``cloud``, ``spool`` and ``cost`` are None without a cloud tier."""

    def __init__(self, metrics: CoordinatorMetrics, stopping: threading.Event, registry,
                 dispatcher, forwarder, store, signals, cloud=None, spool=None, cost=None):
        self.metrics = metrics
        self.stopping = stopping
        self.registry = registry
        self.dispatcher = dispatcher
        self.forwarder = forwarder
        self.store = store
        self.signals = signals
        self.cloud = cloud
        self.spool = spool
        self.cost = cost

    def start(self) -> None:
        """Run the loop on a daemon thread of its own."""
        threading.Thread(target=self.run, name="gauges", daemon=True).start()

    def run(self) -> None:
        """Refresh every second until ``stopping``."""
        tick = 0
        while not self.stopping.wait(1.0):
            if tick % JOB_GAUGES_EVERY == 0:
                self.job_gauges()
            tick += 1
            self.fleet_gauges()

    def fleet_gauges(self) -> None:
        """Nodes by state and load, the dispatcher, admission, the store, the cloud."""
        m = self.metrics
        nodes = self.registry.snapshot()
        states = collections.Counter(r.display_state for r in nodes)
        m.fleet_load(nodes)
        m.forget_versions({(model, version) for r in nodes
                           for model, versions in r.models.items() for version in versions})
        for state in NODE_STATES:
            m.nodes.labels(state).set(states.get(state, 0))
        m.requeued.set(self.dispatcher.requeued)
        m.in_flight.set(self.forwarder.admission.current)
        m.store_fault.set(int(self.store.fault is not None))
        m.followers.set(self.signals.followers())
        if self.cloud is not None:
            items, size = self.spool.totals()
            m.spool_items.set(items)
            m.spool_bytes.set(size)
            m.cloud_cost.set(self.cost.cost)
            m.breaker_open.set(int(self.cloud.breaker.state == "open"))  # a StrEnum

    def job_gauges(self) -> None:
        """Jobs by state and the items still to do (a store that cannot be read leaves
        the last values; its fault has a gauge of its own)."""
        try:
            counts, remaining = self.store.totals()
        except Exception as exc:  # noqa: BLE001 - the metrics loop must go on
            log.debug("job gauges not refreshed: %s", exc)
            return
        for state in JOB_STATES:
            self.metrics.jobs.labels(state).set(counts.get(state, 0))
        self.metrics.job_items_remaining.set(remaining)
