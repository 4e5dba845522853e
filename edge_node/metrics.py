"""Prometheus metrics of the edge node (one registry per node instance)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from edgeshard.prometheus import MetricsEndpoint

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
)


class NodeMetrics(MetricsEndpoint):
    """Request counts by model and outcome, latency split by phase, queue gauges, and the
    model versions refused at load by reason."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.requests = Counter(
            "edgeshard_node_requests", "Inference requests by model and outcome",
            ["model", "version", "outcome"], registry=r,
        )
        self.items = Counter(
            "edgeshard_node_items", "Items (batch rows) inferred", ["model", "version"],
            registry=r,
        )
        self.latency = Histogram(
            "edgeshard_node_request_seconds",
            "Request latency by phase: queue, preprocess, inference, postprocess, total",
            ["model", "phase"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "edgeshard_node_batch_size", "Rows per model invocation", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )
        self.queue_depth = Gauge(
            "edgeshard_node_queue_depth", "Requests waiting for a worker", registry=r,
            multiprocess_mode="livesum",  # with --processes: the node's total
        )
        self.in_flight = Gauge(
            "edgeshard_node_in_flight", "Requests being served (queued or running)", registry=r,
            multiprocess_mode="livesum",
        )
        self.ready = Gauge(
            "edgeshard_node_model_ready", "1 if the model version is ready",
            ["model", "version"], registry=r, multiprocess_mode="livemax",
        )
        self.refused = Counter(
            "edgeshard_node_versions_refused",
            "Model versions refused at load, by reason (see OPERATIONS.md, Signed models)",
            ["model", "version", "reason"], registry=r,
        )
        self.runs_on = Gauge(
            "edgeshard_node_model_runs_on",
            "1 for what runs each model version: delegate=\"cpu\" (XNNPACK) or the external "
            "delegate's library; fallback=\"1\" when a configured delegate could not be used",
            ["model", "version", "delegate", "fallback"], registry=r,
            multiprocess_mode="livemax",
        )

    def version_refused(self, model: str, version: str, reason: str) -> None:
        """Count a refused version (``version`` "": the whole model) and mark it not ready."""
        self.refused.labels(model, version, reason).inc()
        if version:
            self.ready.labels(model, version).set(0)
