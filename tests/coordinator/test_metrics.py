"""The coordinator's metrics: per-version series do not outlive the version."""

from __future__ import annotations

from prometheus_client import generate_latest

from coordinator.metrics import CoordinatorMetrics
from coordinator.monitoring.agreement import AgreementKey, AgreementTracker


def exposition(metrics: CoordinatorMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_series_of_a_version_no_node_serves_are_removed():
    metrics = CoordinatorMetrics()
    tracker = AgreementTracker(window=10, min_items=2, warn_below=0.9)
    for version in ("1", "2"):
        metrics.drift_unprofiled_version("m", version)
        stat, _ = tracker.record(AgreementKey("m", version, "", "audit"), [False, False, True])
        metrics.agreement_stat(stat)
    metrics.drift_alert.labels("m", "1", "").set(1)
    metrics.drift_psi.labels("m", "1", "", "input").set(4.2)
    metrics.drift_alert.labels("other", "1", "").set(0)
    text = exposition(metrics)
    assert 'edgeshard_coordinator_drift_alert{model="m",segment="",version="1"} 1.0' in text
    assert 'cloud_agreement_low{model="m",segment="",source="audit",version="1"} 1.0' in text

    metrics.forget_versions({("m", "2"), ("other", "1")})  # version 1 of m rolled back
    text = exposition(metrics)
    assert 'version="1"' not in text.replace('model="other",segment="",version="1"', "")
    assert 'edgeshard_coordinator_drift_unprofiled{model="m",version="2"} 1.0' in text
    assert 'cloud_agreement_low{model="m",segment="",source="audit",version="2"} 1.0' in text
    assert 'drift_alert{model="other",segment="",version="1"} 0.0' in text

    metrics.drift_alert.labels("m", "1", "").set(0)  # the version is back: series again
    assert 'drift_alert{model="m",segment="",version="1"} 0.0' in exposition(metrics)
