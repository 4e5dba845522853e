"""Write deploy/grafana/edgeshard.json, the Grafana dashboard of an edgeshard fleet.

The panels are listed here once, as (title, unit, [PromQL, legend] ...); run this script
after changing them: ``python scripts/make_dashboard.py``. tests/test_metrics_pages.py
checks that every metric a panel queries is one the node or coordinator exports.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "edgeshard.json"

ROWS = [
    ("Fleet", [
        ("Nodes by state", "short", [("sum by (state) (edgeshard_coordinator_nodes)",
                                       "{{state}}")]),
        ("Requests/s by model and outcome", "reqps", [
            ("sum by (model, outcome) (rate(edgeshard_node_requests_total[5m]))",
             "{{model}} {{outcome}}")]),
        ("Error ratio by model", "percentunit", [
            ("edgeshard:node_requests:error_ratio_5m", "{{model}}")]),
        ("Versions refused (15 min)", "short", [
            ("sum by (model, version, reason) "
             "(increase(edgeshard_node_versions_refused_total[15m]))",
             "{{model}} v{{version}} {{reason}}")]),
    ]),
    ("Latency and batching", [
        ("Node latency p50 / p99 by phase", "s", [
            ("histogram_quantile(0.5, sum by (phase, le) "
             "(rate(edgeshard_node_request_seconds_bucket[5m])))", "p50 {{phase}}"),
            ("histogram_quantile(0.99, sum by (phase, le) "
             "(rate(edgeshard_node_request_seconds_bucket[5m])))", "p99 {{phase}}")]),
        ("Coordinator forward latency p99 by node", "s", [
            ("histogram_quantile(0.99, sum by (node, le) "
             "(rate(edgeshard_coordinator_forward_seconds_bucket[5m])))", "{{node}}")]),
        ("Average batch size by model", "short", [
            ("sum by (model) (rate(edgeshard_node_batch_size_sum[5m])) / "
             "sum by (model) (rate(edgeshard_node_batch_size_count[5m]))", "{{model}}")]),
        ("Queue depth and in flight per node", "short", [
            ("edgeshard_node_queue_depth", "queued {{instance}}"),
            ("edgeshard_node_in_flight", "in flight {{instance}}")]),
    ]),
    ("Load as the coordinator sees it", [
        ("Outstanding per node", "short", [
            ("edgeshard_coordinator_node_in_flight", "{{node}}")]),
        ("Node latency (EWMA)", "s", [
            ("edgeshard_coordinator_node_latency_seconds", "{{node}}")]),
        ("Routing weight", "short", [("edgeshard_coordinator_node_weight", "{{node}}")]),
        ("Online requests in flight", "short", [
            ("edgeshard_coordinator_in_flight", "{{instance}}")]),
    ]),
    ("Jobs", [
        ("Job progress", "short", [
            ("max(edgeshard_coordinator_jobs{state=\"running\"})", "running jobs"),
            ("max(edgeshard_coordinator_job_items_remaining)", "items to do")]),
        ("Job items/s by node", "short", [
            ("sum by (node) (rate(edgeshard_coordinator_job_items_total[5m]))", "{{node}}")]),
        ("Shards requeued, duplicates discarded", "short", [
            ("edgeshard_coordinator_shards_requeued", "requeued"),
            ("increase(edgeshard_coordinator_job_duplicates_total[1h])", "duplicates (1 h)")]),
        ("Watch / FetchResults streams", "short", [
            ("edgeshard_coordinator_job_followers", "{{instance}}")]),
    ]),
    ("Cascade and cloud", [
        ("Escalation decisions/s", "short", [
            ("sum by (model, outcome) (rate(edgeshard_coordinator_escalation_items_total[5m]))",
             "{{model}} {{outcome}}")]),
        ("Cloud calls/s by outcome", "reqps", [
            ("sum by (outcome) (rate(edgeshard_coordinator_cloud_calls_total[5m]))",
             "{{outcome}}")]),
        ("Cloud cost since start", "short", [("edgeshard_coordinator_cloud_cost", "cost")]),
        ("Spool and breaker", "short", [
            ("edgeshard_coordinator_spool_items", "spooled items"),
            ("edgeshard_coordinator_cloud_breaker_open", "breaker open")]),
        ("Edge/cloud agreement", "percentunit", [
            ("edgeshard_coordinator_cloud_agreement",
             "{{model}} v{{version}} {{segment}} {{source}}")]),
        ("Audited items/s by outcome", "short", [
            ("sum by (model, outcome) (rate(edgeshard_coordinator_audit_items_total[5m]))",
             "{{model}} {{outcome}}")]),
    ]),
    ("Drift and segments", [
        ("Input drift (PSI) by segment", "short", [
            ("max by (model, version, segment) "
             "(edgeshard_coordinator_drift_psi{feature=\"input\"})",
             "{{model}} v{{version}} {{segment}}")]),
        ("Confidence drift (PSI) by segment", "short", [
            ("max by (model, version, segment) "
             "(edgeshard_coordinator_drift_psi{feature=\"confidence\"})",
             "{{model}} v{{version}} {{segment}}")]),
        ("Error rate by segment", "percentunit", [
            ("sum by (model, segment) "
             "(rate(edgeshard_coordinator_segment_requests_total{outcome=\"error\"}[5m])) / "
             "sum by (model, segment) (rate(edgeshard_coordinator_segment_requests_total[5m]))",
             "{{model}} {{segment}}")]),
        ("Escalation rate by segment", "percentunit", [
            ("sum by (model, segment) "
             "(rate(edgeshard_coordinator_segment_escalated_items_total[5m])) / "
             "sum by (model, segment) (rate(edgeshard_coordinator_segment_items_total[5m]))",
             "{{model}} {{segment}}")]),
    ]),
    ("Processes", [
        ("Resident memory", "bytes", [
            ("process_resident_memory_bytes{job=~\"edgeshard-.*\"}", "{{job}} {{instance}}")]),
        ("CPU", "percentunit", [
            ("rate(process_cpu_seconds_total{job=~\"edgeshard-.*\"}[5m])",
             "{{job}} {{instance}}")]),
    ]),
]


def dashboard() -> dict:
    """The dashboard as Grafana's JSON model (schema 39), one row per group."""
    panels, y, pid = [], 0, 1
    for row, items in ROWS:
        panels.append({"type": "row", "title": row, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid, y = pid + 1, y + 1
        for i, (title, unit, queries) in enumerate(items):
            panels.append({
                "type": "timeseries", "title": title, "id": pid,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 6, "x": 6 * (i % 4), "y": y + 8 * (i // 4)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [{"refId": chr(ord("A") + k), "expr": expr, "legendFormat": legend,
                             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                            for k, (expr, legend) in enumerate(queries)],
            })
            pid += 1
        y += 8 * ((len(items) + 3) // 4)
    return {
        "title": "edgeshard fleet", "uid": "edgeshard-fleet", "schemaVersion": 39,
        "version": 1, "editable": True, "tags": ["edgeshard"], "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{"type": "datasource", "name": "datasource",
                                 "label": "Prometheus", "query": "prometheus"}]},
        "panels": panels,
    }


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")
