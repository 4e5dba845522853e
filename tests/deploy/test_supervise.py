"""edgeshard-supervise, the roles' process supervisor for hosts without systemd, on real
processes: start, stop with the drain grace, restart on failure, the start limit, exit
status 2, stale pid files, a supervisor killed under its daemon, and the service user."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ansible

SUPERVISE = (Path(__file__).resolve().parents[2] / "deploy" / "ansible" / "roles"
             / "edgeshard_release" / "files" / "edgeshard-supervise")
DAEMON = """\
import os, pathlib, signal, sys, time
here, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
(here / f"started.{os.getpid()}").write_text(str(os.getuid()))
starts = len(list(here.glob("started.*")))
if mode == "fail" or (mode == "flaky" and starts == 1):
    sys.exit(1)
if mode == "config":
    sys.exit(2)
def drain(*_):
    (here / "sigterm").write_text(str(os.getpid()))
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else drain)
while True:
    time.sleep(0.05)
"""


class Service:
    def __init__(self, root: Path, mode: str, python: str = sys.executable, **settings):
        self.root = root
        (root / "daemon.py").write_text(DAEMON)
        self.file = root / "svc.json"
        self.file.write_text(json.dumps({
            "name": "fake", "command": [python, str(root / "daemon.py"), str(root), mode],
            "pidfile": str(root / "run" / "fake.pid"), "log": str(root / "log" / "fake.log"),
            "working_directory": str(root), "stop_timeout_s": 2, "restart_delay_s": 0.1,
            "start_limit_burst": 3, "start_limit_interval_s": 60, **settings,
        }))
        (root / "run").mkdir()

    def __call__(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SUPERVISE), str(self.file), command],
                              capture_output=True, text=True, timeout=30)

    def starts(self) -> list[int]:
        return sorted(int(p.name.split(".")[1]) for p in self.root.glob("started.*"))

    def child(self) -> int | None:
        path = self.root / "run" / "fake.pid.child"
        return int(path.read_text()) if path.exists() else None

    def supervisor(self) -> int:
        return int((self.root / "run" / "fake.pid").read_text())

    def log(self) -> str:
        return (self.root / "log" / "fake.log").read_text()


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    return state != "Z"


@pytest.fixture
def make(tmp_path):
    services = []

    def _make(mode: str, root: Path = tmp_path, **kwargs) -> Service:
        service = Service(root, mode, **kwargs)
        services.append(service)
        return service

    yield _make
    for service in services:
        service("stop")
        for pid in filter(None, [service.child()]):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_start_status_stop_drains_the_daemon(make):
    svc = make("serve")
    out = svc("start")
    assert out.returncode == 0 and out.stdout.startswith("started fake"), out
    assert wait_until(lambda: svc.child() is not None)
    daemon = svc.child()
    assert svc("start").stdout.startswith("running fake")  # idempotent: nothing to do
    status = svc("status")
    assert status.returncode == 0 and f"daemon pid {daemon}" in status.stdout
    stop = svc("stop")
    assert stop.stdout.startswith("stopped fake")
    assert (svc.root / "sigterm").read_text() == str(daemon)  # SIGTERM reached the daemon
    assert not alive(daemon)
    assert svc("status").returncode == 3
    assert svc("stop").stdout.startswith("inactive fake")


def test_restart_replaces_the_daemon(make):
    svc = make("serve")
    svc("start")
    assert wait_until(lambda: svc.child() is not None)
    first = svc.child()
    out = svc("restart")
    assert out.returncode == 0 and out.stdout.startswith("restarted fake"), out
    assert wait_until(lambda: svc.child() not in (None, first))
    assert not alive(first) and alive(svc.child())


def test_a_failed_daemon_is_started_again(make):
    svc = make("flaky")
    svc("start")
    assert wait_until(lambda: len(svc.starts()) == 2)
    assert wait_until(lambda: svc.child() == svc.starts()[-1] and alive(svc.child()))
    assert "exited with status 1; restarting" in svc.log()


def test_it_gives_up_after_the_start_limit(make):
    svc = make("fail")
    svc("start")
    assert wait_until(lambda: svc("status").returncode == 3)
    assert len(svc.starts()) == 3
    assert "failed 3 times within 60s; giving up" in svc.log()


def test_a_configuration_error_is_not_retried(make):
    svc = make("config")
    svc("start")
    assert wait_until(lambda: svc("status").returncode == 3)
    assert len(svc.starts()) == 1
    assert "configuration error" in svc.log()


def test_a_daemon_that_ignores_sigterm_is_killed_after_the_stop_timeout(make):
    svc = make("stubborn")
    svc("start")
    assert wait_until(lambda: svc.child() is not None)
    daemon = svc.child()
    began = time.monotonic()
    svc("stop")
    assert not alive(daemon)
    assert time.monotonic() - began >= 2  # it had its stop_timeout_s to drain
    assert "did not stop within 2s; killing it" in svc.log()


def test_a_stale_pidfile_does_not_count_as_running(make):
    svc = make("serve")
    # The pid of a live process that is not a supervisor (this test's own).
    (svc.root / "run" / "fake.pid").write_text(f"{os.getpid()}\n")
    assert svc("status").returncode == 3
    assert svc("start").stdout.startswith("started fake")
    assert wait_until(lambda: svc.child() is not None)


def test_the_daemon_stops_when_its_supervisor_is_killed(make):
    svc = make("serve")
    svc("start")
    assert wait_until(lambda: svc.child() is not None)
    daemon = svc.child()
    os.kill(svc.supervisor(), signal.SIGKILL)
    assert wait_until(lambda: not alive(daemon))
    assert svc("status").returncode == 3
    assert svc("start").stdout.startswith("started fake")


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3.11").exists(),
                    reason="dropping to the service user needs root and a Python it may run")
def test_the_daemon_runs_as_the_service_user_with_a_clean_environment(make, monkeypatch):
    root = Path(tempfile.mkdtemp(prefix="supervise-"))
    try:
        root.chmod(0o777)  # the daemon (nobody) writes its marker files here
        monkeypatch.setenv("EDGESHARD_LEAK", "1")
        svc = make("serve", root=root, python="/usr/bin/python3.11", user="nobody",
                   group="nogroup", environment={"EDGESHARD_PORT": "1"})
        svc("start")
        assert wait_until(lambda: svc.child() is not None and svc.starts())
        daemon = svc.child()
        assert (root / f"started.{daemon}").read_text() == "65534"
        environ = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{daemon}/environ").read_text().split("\0") if item)
        assert environ["EDGESHARD_PORT"] == "1" and "EDGESHARD_LEAK" not in environ
        svc("stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_environment_file_reaches_the_daemon_but_not_its_argv(make, tmp_path):
    """environment_file is systemd's EnvironmentFile=: a secret (a join token) goes from a
    root-only file into the daemon's environment, not into the service file or argv."""
    env_file = tmp_path / "svc.env"
    env_file.write_text("# the join token\nEDGESHARD_JOIN_TOKEN=s3cret-token\n\nQUOTED='a b'\n")
    env_file.chmod(0o600)
    svc = make("serve", environment={"PLAIN": "1"}, environment_file=str(env_file))
    assert svc("start").returncode == 0
    assert wait_until(lambda: svc.child() is not None and alive(svc.child()))
    pid = svc.child()
    environ = dict(entry.split("=", 1) for entry in
                   Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in entry)
    assert (environ["EDGESHARD_JOIN_TOKEN"], environ["QUOTED"], environ["PLAIN"]) == (
        "s3cret-token", "a b", "1")
    assert b"s3cret-token" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert "s3cret-token" not in svc.file.read_text() + svc.log()


def test_a_missing_environment_file_adds_nothing(make, tmp_path):
    svc = make("serve", environment_file=str(tmp_path / "absent.env"))
    assert svc("start").returncode == 0
    assert wait_until(lambda: svc.child() is not None and alive(svc.child()))
    environ = Path(f"/proc/{svc.child()}/environ").read_text()
    assert "EDGESHARD_JOIN_TOKEN" not in environ
