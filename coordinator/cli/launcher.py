"""Start edgeshard daemons as local processes on free loopback ports (dev fleet, demo, tests).

Each daemon writes a ready file once it is SERVING; the launcher waits for it, so a
returned node is warm. Processes are stopped with SIGTERM (graceful drain), then SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeshard.settings import ENV_PREFIX


class LaunchError(RuntimeError):
    """A node process exited or did not become ready in time."""


@dataclass
class NodeProcess:
    """A daemon started as a local process, with its ready-file ``info`` once it serves.

    ``info`` is the JSON the daemon wrote to ``ready_file`` (``grpc_port`` and others);
    the process's stdout and stderr go to ``log_path``.
    """

    name: str
    process: subprocess.Popen
    ready_file: Path
    log_path: Path
    info: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        """The gRPC ``127.0.0.1:PORT`` address from the ready file."""
        return f"127.0.0.1:{self.info['grpc_port']}"

    def wait_ready(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the ready file and load it into ``info``.

        Raises ``LaunchError`` (with the log's tail) when the process exits first or the time
        runs out.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                self.info = json.loads(self.ready_file.read_text())
                return
            if self.process.poll() is not None:
                raise LaunchError(
                    f"{self.name} exited with {self.process.returncode}; log:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        raise LaunchError(f"{self.name} not ready after {timeout:.0f}s; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the process's log, or ``(no log)`` when there is none."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM the process, SIGKILL it after ``grace + 5`` s; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace + 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the process (if still running) and reap it."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def tls_args(pki: Path | None, name: str) -> list[str]:
    """``--tls-cert/--tls-key/--tls-ca`` flags for the daemon ``name`` with the files
    ``edgeshard.certs.write_fleet_pki`` wrote into ``pki`` (mutual TLS); none without."""
    if pki is None:
        return []
    return ["--tls-cert", str(pki / f"{name}.pem"), "--tls-key", str(pki / f"{name}.key"),
            "--tls-ca", str(pki / "ca.pem")]


def start_node(name: str, model_repository: Path, workdir: Path | None = None,
               extra_args: list[str] | None = None, env: dict | None = None,
               timeout: float = 60.0) -> NodeProcess:
    """Start ``edge-node`` on a free loopback port and wait until it is SERVING."""
    args = ["--model-repository", str(model_repository), "--host", "127.0.0.1", "--port", "0",
            "--node-id", name, *(extra_args or [])]
    return start_process(name, ["-m", "edge_node"], args, workdir, env, timeout)


def start_coordinator(name: str, state_dir: Path, workdir: Path | None = None,
                      extra_args: list[str] | None = None, env: dict | None = None,
                      timeout: float = 60.0) -> NodeProcess:
    """Start ``edge-coordinator serve`` on a free loopback port and wait until it serves."""
    args = ["serve", "--host", "127.0.0.1", "--port", "0", "--state-dir", str(state_dir),
            *(extra_args or [])]
    return start_process(name, ["-m", "coordinator"], args, workdir, env, timeout)


def inherited_environment() -> dict[str, str]:
    """This process's environment without its ``EDGESHARD_*`` settings, for a daemon the
    launcher starts: a local fleet must not join the coordinator (or take the ports, the
    config file...) that the user's shell names for the admin commands. Only
    ``EDGESHARD_PUREPYTHON`` (which kernels to run) is passed on."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(ENV_PREFIX) or k == "EDGESHARD_PUREPYTHON"}


def start_process(name: str, module: list[str], args: list[str], workdir: Path | None = None,
                  env: dict | None = None, timeout: float = 60.0,
                  wrapper: list[str] | None = None) -> NodeProcess:
    """Run ``python -m <module> <args> --ready-file F`` and wait for F to appear.

    ``wrapper`` goes before the command, e.g. ``["ip", "netns", "exec", NS]`` to run it
    in a network namespace (a wrapper that execs keeps the pid the daemon's).
    The process is killed when it does not become ready (``LaunchError``) or the wait is
    interrupted (``KeyboardInterrupt``), so the caller never has to stop a process it was
    not given.
    """
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgeshard-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    log_path = workdir / f"{name}.log"
    cmd = [*(wrapper or []), sys.executable, *module, *args, "--ready-file", str(ready)]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**inherited_environment(), **(env or {})},
        )
    node = NodeProcess(name, proc, ready, log_path)
    try:
        node.wait_ready(timeout)
    except BaseException:  # not ready, or Ctrl-C while waiting: no process is left behind
        node.kill()
        raise
    return node
