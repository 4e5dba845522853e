"""The example config files in deploy/config load and validate."""

from __future__ import annotations

from pathlib import Path

from coordinator.config import build as build_coordinator
from edge_node.config import build as build_node

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "config"


def test_node_example_loads():
    cfg = build_node({}, {}, CONFIG / "node.toml")
    assert cfg.port == 8001 and cfg.advertise and cfg.coordinator == ("coordinator.local:8000",)
    assert cfg.capacity == 8  # 4 x 2 workers
    assert cfg.tls_files.cert == Path("/etc/edgeshard/tls/node-1.pem") and cfg.tls_files.ca
    assert cfg.require_signed and cfg.trust_key == (Path("/etc/edgeshard/keys"),)


def test_coordinator_example_loads_with_its_cascade():
    cfg = build_coordinator({}, {}, CONFIG / "coordinator.toml")
    assert cfg.node == ("10.0.0.5:8001", "10.0.0.6:8001") and cfg.discover
    assert cfg.tls_key == Path("/etc/edgeshard/tls/coordinator.key") and not cfg.insecure
    (rule,) = cfg.cascade_rules().values()
    assert (rule.model, rule.cloud_model) == ("mnist_edge", "mnist_cloud")
    assert (rule.policy.name, rule.policy.threshold) == ("max_prob", 0.87)
    assert cfg.audit_rates() == {"mnist_edge": 0.01} and cfg.agreement_warn == 0.9


def test_flags_override_the_file():
    cfg = build_coordinator({"port": "9000"}, {"EDGESHARD_SHARD_SIZE": "16"},
                            CONFIG / "coordinator.toml")
    assert cfg.port == 9000 and cfg.shard_size == 16
