"""``edge-node --processes N``: several serving processes behind one port (SO_REUSEPORT),
real processes: connections spread over them, one metrics page with the node's totals
(promtool checks it), a child that dies is restarted, SIGTERM drains them all, one
registration with the coordinator, and Triton's repository load and unload reach them all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th

import edgeshard_models

EDGE = edgeshard_models.EDGE_MODEL
pytestmark = pytest.mark.timeout(180)


def infer_once(address: str, images: np.ndarray) -> int:
    """One request on a connection of its own (the kernel picks a process per connection)."""
    client = tc.InferenceServerClient(address)
    try:
        inp = tc.InferInput("image", list(images.shape), "UINT8")
        inp.set_data_from_numpy(images)
        return int(client.infer(EDGE, [inp]).as_numpy("label")[0])
    finally:
        client.close()


def successes_seen(address: str) -> int:
    """ModelStatistics' success count of whichever process this new connection reaches."""
    client = tc.InferenceServerClient(address)
    try:
        stats = client.get_inference_statistics(EDGE, as_json=True)
        return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))
    finally:
        client.close()


def metric(page: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_processes_share_the_port_metrics_restart_and_drain(
        start, shipped_repository, holdout, promtool, tmp_path):
    images, _ = holdout
    node = start(shipped_repository, "--processes", "2", "--workers", "1",
                 "--metrics-port", "0", "--http-port", "0")
    children = node.info["processes"]
    assert len(children) == 2 and all(alive(pid) for pid in children)
    for i in range(40):
        assert infer_once(node.address, images[i:i + 1]) == \
            infer_once(node.address, images[i:i + 1])
    seen = {successes_seen(node.address) for _ in range(12)}
    assert max(seen) < 80, f"one process served every request: {seen}"  # both served
    page = scrape(node.info["metrics_port"])
    assert metric(page, "edgeshard_node_requests_total") == 80  # the node's total
    assert metric(page, 'edgeshard_node_model_ready{model="mnist_edge",version="1"}') == 1
    (tmp_path / "page.txt").write_text(page)
    checked = subprocess.run([str(promtool), "check", "metrics"], input=page, text=True,
                             capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # the HTTP/REST binding shares its port too
    http = th.InferenceServerClient(f"127.0.0.1:{node.info['http_port']}")
    try:
        assert http.is_model_ready(EDGE)
    finally:
        http.close()
    # Triton's repository index answers
    client = tc.InferenceServerClient(node.address)
    try:
        assert {m["name"] for m in client.get_model_repository_index(as_json=True)["models"]} \
            >= {EDGE}
    finally:
        client.close()

    # A serving process that dies is restarted; once it is gone (a connection the kernel
    # had queued for it is reset: clients retry UNAVAILABLE) the others serve every new
    # connection, and the restarted one joins them.
    os.kill(children[1], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while b"restarting it" not in node.log_path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"serving process 1 (pid" in node.log_path.read_bytes()
    started = b"[1/2] edge_node.server: edge node starting"
    while node.log_path.read_bytes().count(started) < 2 and time.monotonic() < deadline:
        infer_once(node.address, images[:1])  # raises if a new connection is not served
        time.sleep(0.05)
    assert node.log_path.read_bytes().count(started) == 2
    for i in range(20):
        infer_once(node.address, images[i:i + 1])
    page = scrape(node.info["metrics_port"])
    assert metric(page, "edgeshard_node_process_restarts_total") == 1
    assert metric(page, "edgeshard_node_serving_processes") == 2
    checked = subprocess.run([str(promtool), "check", "metrics"], input=page, text=True,
                             capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # SIGTERM: every process drains and exits; the supervisor exits 0
    assert node.stop(grace=5) == 0
    assert not any(alive(pid) for pid in children)
    log = node.log_path.read_text()
    assert log.count("draining") == 2 and "Traceback" not in log


def test_the_node_registers_once_and_the_coordinator_reaches_every_process(fleet, holdout):
    # 16 connections to the 2 processes: all on one of them has odds of 2 in 65,536
    fleet.start_coordinator("--connections-per-process", "8")
    proc = fleet.add_node("multi", "--processes", "2", "--max-connection-age-s", "2")
    (node,) = fleet.wait_live(1)
    assert node.node_id == "multi"
    assert node.load.capacity == 4 * 1 * 2
    assert node.processes == 2
    time.sleep(1)  # a second heartbeat: still one node
    assert [n.node_id for n in fleet.client.nodes()] == ["multi"]
    images, _ = holdout
    client = tc.InferenceServerClient(fleet.coordinator.address)  # one client connection
    try:
        for i in range(60):
            inp = tc.InferInput("image", [1, 28, 28], "UINT8")
            inp.set_data_from_numpy(images[i:i + 1])
            client.infer(EDGE, [inp])
    finally:
        client.close()
    # The coordinator opened several connections to the node: both processes served.
    seen = {successes_seen(proc.address) for _ in range(12)}
    assert max(seen) < 60, f"one process served every request: {seen}"

    # A restarted process gets the coordinator's traffic again: connections are closed
    # after --max-connection-age-s and spread anew when the clients reconnect.
    import json

    old = proc.info["processes"]
    os.kill(old[1], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = json.loads(proc.ready_file.read_text())["processes"]
        if pids[1] != old[1]:
            break
        time.sleep(0.1)
    assert pids[0] == old[0] and pids[1] != old[1], "the ready file names the new process"
    client = tc.InferenceServerClient(fleet.coordinator.address)
    try:
        end = time.monotonic() + 8  # a few connection ages
        while time.monotonic() < end:
            inp = tc.InferInput("image", [1, 28, 28], "UINT8")
            inp.set_data_from_numpy(images[:1])
            client.infer(EDGE, [inp])
    finally:
        client.close()
    seen = {successes_seen(proc.address) for _ in range(16)}
    assert len(seen) == 2 and min(seen) > 0, f"the restarted process served nothing: {seen}"


def test_a_taken_port_is_refused_before_any_process_starts(busy_port, shipped_repository):
    out = subprocess.run(
        [sys.executable, "-m", "edge_node", "--model-repository", str(shipped_repository),
         "--host", "127.0.0.1", "--processes", "2", *busy_port.flags("--port")],
        capture_output=True, text=True, timeout=60)
    busy_port.assert_refused(out, "--port")
    assert "serving process 0/2 started" not in out.stderr


def test_a_child_that_cannot_start_fails_the_node(tmp_path, shipped_repository):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "edge_node", "--model-repository", str(empty), "--host",
         "127.0.0.1", "--port", "0", "--processes", "2"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "no model could be loaded" in out.stderr  # the child's own reason
    assert "serving process 0 exited with 1 while starting" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_bad_role_variable_is_a_configuration_error(shipped_repository):
    out = subprocess.run(
        [sys.executable, "-m", "edge_node", "--model-repository", str(shipped_repository)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "EDGE_NODE_PROCESS": "3/2"})
    assert out.returncode == 2
    assert "EDGE_NODE_PROCESS: index must be in 0..COUNT-1" in out.stderr


def test_grpc_keeps_serving_a_client_whose_process_died(start, shipped_repository, holdout):
    """A client channel reconnects (to a live process) after its process is killed."""
    images, _ = holdout
    node = start(shipped_repository, "--processes", "2", "--workers", "1")
    client = tc.InferenceServerClient(node.address)
    try:
        inp = tc.InferInput("image", [1, 28, 28], "UINT8")
        inp.set_data_from_numpy(images[:1])
        client.infer(EDGE, [inp])
        for pid in node.info["processes"]:
            os.kill(pid, signal.SIGKILL)
            break
        answered = 0
        deadline = time.monotonic() + 30
        while answered < 5 and time.monotonic() < deadline:
            try:
                client.infer(EDGE, [inp])
                answered += 1
            except tc.InferenceServerException:
                time.sleep(0.1)  # the connection to the killed process failed: retry
        assert answered == 5
    finally:
        client.close()


def test_children_do_not_outlive_a_supervisor_killed_with_sigkill(start, shipped_repository):
    node = start(shipped_repository, "--processes", "2", "--workers", "1")
    children = node.info["processes"]
    node.kill()  # SIGKILL: the supervisor cannot pass anything on
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in children), "a serving process outlived its supervisor"


def test_a_dead_supervisors_private_directory_is_removed_by_the_next_one(start,
                                                                          shipped_repository):
    import tempfile
    from pathlib import Path

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = Path(tempfile.mkdtemp(prefix=f"edge-node-{int(gone.stdout)}-"))
    (stale / "metrics").mkdir()
    node = start(shipped_repository, "--processes", "2", "--workers", "1")
    assert not stale.exists()
    assert node.stop(grace=5) == 0


def readiness_seen(address: str, connections: int = 12) -> set[bool]:
    """``is_model_ready(EDGE)`` as answered on ``connections`` new connections (the
    kernel gives each to one of the serving processes)."""
    seen = set()
    for _ in range(connections):
        client = tc.InferenceServerClient(address)
        try:
            seen.add(client.is_model_ready(EDGE))
        finally:
            client.close()
    return seen


def test_a_load_or_unload_reaches_every_process_and_a_restarted_one(
        start, shipped_repository, holdout):
    images, _ = holdout
    node = start(shipped_repository, "--processes", "2", "--workers", "1")
    client = tc.InferenceServerClient(node.address)
    try:
        client.unload_model(EDGE)  # answered once both processes applied it
        assert readiness_seen(node.address) == {False}
        with pytest.raises(tc.InferenceServerException):
            infer_once(node.address, images[:1])
        # a model without a directory is refused by the process that got the call
        with pytest.raises(tc.InferenceServerException, match="no directory"):
            client.load_model("no_such_model")
        # a serving process that restarts catches up on the log (the newest command for
        # a model counts): the model stays unloaded
        client.load_model(EDGE)
        client.unload_model(EDGE)
        os.kill(node.info["processes"][1], signal.SIGKILL)
        started = b"[1/2] edge_node.server: edge node starting"
        deadline = time.monotonic() + 30
        while node.log_path.read_bytes().count(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        serving = re.compile(rb"\[1/2\] edge_node\.server: edge node \S+ serving")
        while (len(serving.findall(node.log_path.read_bytes())) < 2
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert len(serving.findall(node.log_path.read_bytes())) == 2, "not back in 30 s"
        assert readiness_seen(node.address) == {False}
        client.load_model(EDGE)
        assert readiness_seen(node.address) == {True}
        for i in range(10):
            infer_once(node.address, images[i:i + 1])
    finally:
        client.close()
    assert node.stop(grace=5) == 0
    assert "Traceback" not in node.log_path.read_text()
