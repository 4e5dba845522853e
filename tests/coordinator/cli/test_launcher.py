"""The launcher's daemons (demo, calibrate, tests) ignore the user's EDGESHARD_* settings."""

from __future__ import annotations

import time

import pytest

from coordinator.cli.launcher import inherited_environment, start_node

pytestmark = pytest.mark.timeout(120)


def test_a_launched_node_does_not_join_the_coordinator_the_shell_names(
        fleet, shipped_repository, monkeypatch):
    fleet.start_coordinator()
    monkeypatch.setenv("EDGESHARD_COORDINATOR", fleet.coordinator.address)  # for admin commands
    monkeypatch.setenv("EDGESHARD_WORKERS", "many")  # would make the node refuse to start
    monkeypatch.setenv("EDGESHARD_PUREPYTHON", "1")
    assert inherited_environment()["EDGESHARD_PUREPYTHON"] == "1"
    assert "EDGESHARD_COORDINATOR" not in inherited_environment()
    node = start_node("local", shipped_repository, fleet.workdir)
    fleet.nodes.append(node)
    time.sleep(1.5)  # a registration would have arrived by now (it is retried within 1 s)
    assert fleet.client.nodes() == []
    assert "registered" not in fleet.coordinator.log_path.read_text()
    assert "coordinator" not in node.log_path.read_text().lower()
