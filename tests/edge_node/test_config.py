"""Configuration: flags > EDGESHARD_* environment > TOML file, with errors that name the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_node.config import NodeConfig, build
from edgeshard.settings import SettingsError


def test_precedence_flags_env_file(tmp_path):
    cfg_file = tmp_path / "node.toml"
    cfg_file.write_text('model_repository = "/from/file"\nport = 1111\nworkers = 3\n'
                        'grace_seconds = 2.5\n')
    env = {"EDGESHARD_PORT": "2222", "EDGESHARD_WORKERS": "5"}
    cfg = build({"port": "3333"}, env, cfg_file)
    assert cfg.port == 3333  # flag
    assert cfg.workers == 5  # env over file
    assert cfg.grace_seconds == 2.5  # file
    assert cfg.model_repository == Path("/from/file")
    assert cfg.host == "127.0.0.1"  # default


def test_section_in_file(tmp_path):
    cfg_file = tmp_path / "node.toml"
    cfg_file.write_text('[edge_node]\nmodel_repository = "m"\nmetrics_port = 0\n')
    assert build({}, {}, cfg_file).metrics_port == 0


@pytest.mark.parametrize("flags,field", [
    ({"port": "70000"}, "port"),
    ({"port": "abc"}, "port"),
    ({"workers": "-1"}, "workers"),
    ({"max_queue_size": "0"}, "max_queue_size"),
    ({"max_infer_streams": "-1"}, "max_infer_streams"),
    ({"processes": "-1"}, "processes"),
    ({"max_connection_age_s": "-1"}, "max_connection_age_s"),
    ({"processes": "300"}, "processes"),
    ({"max_infer_streams": "2000"}, "max_infer_streams"),
    ({"log_level": "LOUD"}, "log_level"),
    ({"max_message_bytes": "10"}, "max_message_bytes"),
    ({"drift_sample_every": "-1"}, "drift_sample_every"),
    ({"drift_window_items": "0"}, "drift_window_items"),
    ({"drift_max_segments": "0"}, "drift_max_segments"),
])
def test_bad_values_name_the_field(flags, field):
    with pytest.raises(SettingsError, match=f"^{field}:"):
        build({"model_repository": "m", **flags}, {})


def test_missing_repository_and_unknown_key(tmp_path):
    with pytest.raises(SettingsError, match="model_repository: required"):
        build({}, {})
    bad = tmp_path / "bad.toml"
    bad.write_text('model_repository = "m"\nprot = 1\n')
    with pytest.raises(SettingsError, match="unknown key.*prot"):
        build({}, {}, bad)
    with pytest.raises(SettingsError, match="not found"):
        build({}, {}, tmp_path / "nope.toml")


def test_workers_default_to_cpu_count():
    assert NodeConfig(model_repository="m").workers >= 1


def test_cli_help_and_config_error_exit_code():
    out = subprocess.run([sys.executable, "-m", "edge_node", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "--model-repository" in out.stdout and "EDGESHARD_PORT" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "edge_node", "--model-repository", "m",
                          "--port", "-5"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "port:" in bad.stderr


def test_processes_share_the_cores_and_the_capacity_is_the_whole_node(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    cfg = build({"model_repository": "m", "processes": "0"}, {})
    assert (cfg.processes, cfg.workers, cfg.capacity) == (8, 1, 32)
    cfg = build({"model_repository": "m", "processes": "2"}, {})
    assert (cfg.processes, cfg.workers, cfg.capacity) == (2, 4, 32)
    cfg = build({"model_repository": "m", "processes": "2", "workers": "3",
                 "capacity": "5"}, {})
    assert (cfg.processes, cfg.workers, cfg.capacity) == (2, 3, 5)
