"""The metrics pages of a real coordinator and node: Prometheus's own checker passes on
them, every family is documented, no _created series; the shipped rules, scrape config
and dashboard check out and query only metrics that exist."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc

import edgeshard_models

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "OPERATIONS.md").read_text()
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "edgeshard.json"


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def families(page: str) -> dict[str, str]:
    """Family name -> type, from the page's # TYPE lines (counters named with _total)."""
    out = {}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", page, re.M):
        out[name + ("_total" if kind == "counter" and not name.endswith("_total") else "")] = kind
    return out


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    from coordinator.cli.launcher import start_coordinator, start_node

    workdir = tmp_path_factory.mktemp("metrics")
    coordinator = start_coordinator("coordinator", workdir / "state", workdir,
                                    extra_args=["--metrics-port", "0"])
    node = start_node("n1", edgeshard_models.repository_path(), workdir,
                      extra_args=["--metrics-port", "0", "--coordinator", coordinator.address])
    try:
        client = tc.InferenceServerClient(coordinator.address)
        inp = tc.InferInput("image", [4, 28, 28], "UINT8")
        inp.set_data_from_numpy(np.zeros((4, 28, 28), np.uint8))
        for _ in range(300):  # until the node has registered
            try:
                client.infer(edgeshard_models.EDGE_MODEL, [inp])
                break
            except tc.InferenceServerException:
                time.sleep(0.1)
        client.close()
        # the coordinator's gauges refresh every second (later on a busy machine)
        deadline = time.monotonic() + 15
        while 'edgeshard_coordinator_node_in_flight{node="n1"}' not in \
                scrape(coordinator.info["metrics_port"]) and time.monotonic() < deadline:
            time.sleep(0.25)
        yield {"node": scrape(node.info["metrics_port"]),
               "coordinator": scrape(coordinator.info["metrics_port"])}
    finally:
        node.stop(grace=5)
        coordinator.stop(grace=5)


@pytest.mark.parametrize("role", ["node", "coordinator"])
def test_promtool_check_metrics_passes(pages, promtool, role):
    proc = subprocess.run([str(promtool), "check", "metrics"], input=pages[role].encode(),
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.decode().strip() == "", proc.stdout.decode()  # no lint warnings


@pytest.mark.parametrize("role", ["node", "coordinator"])
def test_every_family_is_documented_and_no_created_series(pages, role):
    page = pages[role]
    assert "_created" not in page
    names = [n for n in families(page) if n.startswith("edgeshard_")]
    assert len(names) > 5
    undocumented = [n for n in names if f"`{n}`" not in DOCS]
    assert undocumented == [], "add them to docs/OPERATIONS.md, Metrics reference"
    assert "process_resident_memory_bytes" in families(page)


def test_requests_were_counted(pages):
    assert re.search(r'edgeshard_node_requests_total\{model="mnist_edge",outcome="success",'
                     r'version="1"\} [1-9]', pages["node"])
    assert re.search(r'edgeshard_coordinator_node_in_flight\{node="n1"\} ', pages["coordinator"])


def test_promtool_checks_the_rules_and_the_scrape_config(promtool):
    for args in (["check", "rules", str(RULES)],
                 ["check", "config", str(RULES.parent / "prometheus.yml")]):
        proc = subprocess.run([str(promtool), *args], capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
        assert "SUCCESS" in proc.stdout.decode()


def test_dashboard_and_rules_query_only_metrics_that_exist(pages):
    exported = set(families(pages["node"])) | set(families(pages["coordinator"]))
    known = exported | {f"{n}_bucket" for n in exported} | {f"{n}_sum" for n in exported} \
        | {f"{n}_count" for n in exported}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    text = "\n".join(exprs) + RULES.read_text()
    used = set(re.findall(r"\b(edgeshard_[a-z_]+|process_[a-z_]+)\b", text))
    assert used - known == set()
    # The dashboard file is what scripts/make_dashboard.py writes.
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_dashboard",
                                                  ROOT / "scripts" / "make_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.dashboard() == dashboard
