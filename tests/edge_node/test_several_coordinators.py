"""An edge node joining several coordinators: ``--coordinator`` repeated or comma-separated
(env: comma-separated; config file: a list or a string), each coordinator registered with
and sent heartbeats on its own, so one that is down delays no other."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from coordinator.api.control_client import CoordinatorClient
from coordinator.cli.launcher import start_coordinator
from edge_node.config import NodeConfig, build
from edgeshard.settings import SettingsError

pytestmark = pytest.mark.timeout(180)
MEMBERSHIP = ["--heartbeat-interval-s", "0.3", "--probe-interval-s", "0.3",
              "--probe-timeout-s", "0.5", "--suspect-after-s", "1.0", "--dead-after-s", "2.0"]


def closed_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


# -- settings ------------------------------------------------------------------------------
def test_repeated_flags_and_comma_lists_give_every_coordinator_in_order():
    cfg = build({"model_repository": "m", "coordinator": ["a:1", "b:2, c:3"]}, {})
    assert cfg.coordinator == ("a:1", "b:2", "c:3")
    assert build({"model_repository": "m"}, {}).coordinator == ()
    assert NodeConfig(model_repository="m", coordinator="a:1,b:2").coordinator == ("a:1", "b:2")


def test_environment_is_comma_separated_and_flags_win():
    env = {"EDGESHARD_COORDINATOR": "a:1, b:2,"}
    assert build({"model_repository": "m"}, env).coordinator == ("a:1", "b:2")
    assert build({"model_repository": "m", "coordinator": ["z:9"]}, env).coordinator == ("z:9",)


@pytest.mark.parametrize("toml,expected", [
    ('coordinator = ["a:1", "[::1]:2"]', ("a:1", "[::1]:2")),
    ('coordinator = "a:1,b:2"', ("a:1", "b:2")),
    ('coordinator = "a:1"', ("a:1",)),
])
def test_config_file_takes_a_list_or_a_string(tmp_path, toml, expected):
    path = tmp_path / "node.toml"
    path.write_text(f'[edge_node]\nmodel_repository = "m"\n{toml}\n')
    assert build({}, {}, path).coordinator == expected


@pytest.mark.parametrize("value,message", [
    (["a:1", "nohost"], "coordinator: 'nohost' is not HOST:PORT (e.g. 127.0.0.1:8000)"),
    (["a:1,b:port"], "coordinator: 'b:port' is not HOST:PORT"),
    (["a:70000"], "coordinator: 'a:70000' is not HOST:PORT"),
    (["a:1", "b:2,a:1"], "coordinator: 'a:1' is given twice"),
])
def test_a_bad_entry_is_named_with_the_field(value, message):
    with pytest.raises(SettingsError) as bad:
        build({"model_repository": "m", "coordinator": value}, {})
    assert str(bad.value).startswith(message)


def test_a_bad_entry_in_the_environment_or_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match=r"^coordinator: ':8000' is not HOST:PORT"):
        build({"model_repository": "m"}, {"EDGESHARD_COORDINATOR": "a:1,:8000"})
    path = tmp_path / "node.toml"
    path.write_text('model_repository = "m"\ncoordinator = ["a:1", 8000]\n')
    with pytest.raises(SettingsError, match=r"^coordinator: '8000' is not HOST:PORT"):
        build({}, {}, path)


def test_cli_refuses_a_bad_entry_with_exit_code_2():
    out = subprocess.run([sys.executable, "-m", "edge_node", "--model-repository", "m",
                          "--coordinator", "127.0.0.1:8000", "--coordinator", "oops"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "configuration error: coordinator: 'oops' is not HOST:PORT" in out.stderr


# -- processes -----------------------------------------------------------------------------
@pytest.fixture
def coordinators(tmp_path):
    """Start coordinator processes (each with its own state dir); all killed afterwards."""
    started, clients = [], []

    def start(count: int) -> list[tuple[str, CoordinatorClient]]:
        for _ in range(count):
            name = f"coordinator-{len(started)}"
            started.append(start_coordinator(name, tmp_path / name / "state", tmp_path / name,
                                             extra_args=MEMBERSHIP))
            clients.append(CoordinatorClient(started[-1].address))
        return [(p.address, c) for p, c in zip(started, clients, strict=True)]

    yield start
    for client in clients:
        client.close()
    for proc in started:
        proc.kill()


def wait_live(client: CoordinatorClient, node_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(n.node_id == node_id and n.state == "live" for n in client.nodes()):
            return
        time.sleep(0.1)
    raise AssertionError(f"{node_id} not live at {client.address}: {client.nodes()}")


def test_a_node_registers_with_each_coordinator(coordinators, start, shipped_repository):
    (a, client_a), (b, client_b) = coordinators(2)
    node = start(shipped_repository, "--workers", "1", "--coordinator", a,
                 "--coordinator", b, name="both")
    for client in (client_a, client_b):
        wait_live(client, "both")
        (info,) = client.nodes()
        assert info.source == "registered" and info.address == node.address
    started = time.monotonic()
    assert node.stop(grace=5) == 0
    assert time.monotonic() - started < 10


def test_a_coordinator_down_from_the_start_holds_up_no_other(coordinators, start,
                                                             shipped_repository):
    dead = closed_address()
    ((live, client),) = coordinators(1)
    node = start(shipped_repository, "--workers", "1", "--coordinator", f"{dead},{live}",
                 name="half")
    wait_live(client, "half")
    time.sleep(1.5)  # several heartbeat intervals, while registration with `dead` fails
    (info,) = client.nodes()
    assert info.state == "live" and info.last_seen_s_ago < 1.0
    log = node.log_path.read_text()
    assert f"cannot register with coordinator {dead}" in log
    assert f"registered with coordinator {live}" in log
    started = time.monotonic()
    assert node.stop(grace=5) == 0
    assert time.monotonic() - started < 10
