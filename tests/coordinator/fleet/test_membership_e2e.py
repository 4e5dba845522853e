"""Membership with real processes: zeroconf discovery, registration, heartbeats."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.timeout(120)


def test_advertised_nodes_are_discovered(fleet):
    fleet.start_coordinator("--discover")
    fleet.add_node("adv-1", "--advertise", register=False)
    fleet.add_node("adv-2", "--advertise", register=False)
    live = fleet.wait_live(2, timeout=30)
    by_id = {n.node_id: n for n in live}
    assert set(by_id) == {"adv-1", "adv-2"}
    assert all(n.source == "discovered" for n in live)
    assert {n.address for n in live} == {p.address for p in fleet.nodes}


def test_registered_node_reports_load_and_reregisters_after_restart(fleet):
    fleet.start_coordinator()
    node = fleet.add_node("reg-1")
    (info,) = fleet.wait_live(1)
    assert info.node_id == "reg-1" and info.source == "registered" and info.epoch > 0
    assert info.load.capacity == 4  # 4 x 1 worker
    port = fleet.coordinator.info["grpc_port"]
    fleet.coordinator.kill()
    fleet.start_coordinator("--port", str(port), name="coordinator-2")
    (again,) = fleet.wait_live(1)  # the node noticed and registered with the new process
    assert again.node_id == "reg-1" and again.address == node.address
    assert again.epoch != info.epoch


def test_stopped_node_goes_suspect_then_dead_then_live_again(fleet):
    import os
    import signal

    fleet.start_coordinator()
    node = fleet.add_node("flaky")
    fleet.wait_live(1)
    os.kill(node.process.pid, signal.SIGSTOP)
    seen = set()
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline and "dead" not in seen:
            seen.add({n.node_id: n.state for n in fleet.client.nodes()}["flaky"])
            time.sleep(0.05)
    finally:
        os.kill(node.process.pid, signal.SIGCONT)
    assert {"suspect", "dead"} <= seen
    fleet.wait_live(1)


def test_second_coordinator_on_the_same_state_dir_is_refused(fleet):
    from coordinator.cli.launcher import LaunchError, start_coordinator

    fleet.start_coordinator()
    with pytest.raises(LaunchError) as err:
        start_coordinator("intruder", fleet.state_dir, fleet.workdir, timeout=30)
    assert "in use by another coordinator" in str(err.value)
