"""Several serving processes behind one port: the edge node past Python's GIL.

One ``edge-node`` process serves requests on one core's worth of Python (gRPC handling,
pre- and post-processing hold the GIL; only the TFLite invoke runs in parallel). With
``--processes N`` (N > 1; 0: one per core) the ``edge-node`` process becomes a
**supervisor** of N serving processes, as gRPC's own multiprocessing example and
gunicorn do it: each child is a whole node (its own interpreters, batcher, gRPC server
and, with ``--http-port``, HTTP server) bound to the same port with ``SO_REUSEPORT``, so
the kernel spreads connections over them.

The supervisor:

* starts child 0 on ``--port`` (0: a free port), reads the port it bound, and starts the
  others on it; it reports SERVING (``--ready-file``) once all are;
* serves ``/metrics`` on ``--metrics-port`` for all of them: the children write their
  series to files in a private directory (prometheus_client's multiprocess mode) and
  the supervisor sums them (gauges of load are summed over live children, per-version
  readiness is the maximum);
* restarts a child that dies (after 1 s, doubling to 30 s while it keeps dying);
* on SIGTERM or SIGINT, passes SIGTERM on to every child, which drains as a single node
  does, and kills what is left after ``--grace-seconds`` + 5 s.

Only child 0 registers with the coordinators and advertises by zeroconf: the fleet sees
one node with the capacity of all its processes (``--capacity``, default 4 per worker per
process); the other children write their drift windows to a shared directory every
second and child 0's heartbeats carry the sum (``edge_node.drift``). Each child's
heartbeat load and ``ModelStatistics`` are its own; the metrics page has the node's
totals. Triton's repository load and unload calls reach one child, which passes them to
the others through a log in the private directory and answers once all applied them
(``edge_node.control``); new versions are also picked up by every child with
``--model-poll-s``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_node.config import NodeConfig
from edge_node.errors import ModelLoadError
from edgeshard.errors import BindError

log = logging.getLogger(__name__)

ROLE_ENV = "EDGE_NODE_PROCESS"  # "INDEX/COUNT", set by the supervisor in each child
SUPERVISOR_ENV = "EDGE_NODE_SUPERVISOR"  # the supervisor's pid, likewise
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode
DRIFT_DIR_ENV = "EDGE_NODE_DRIFT_DIR"  # where the children share their drift windows
CONTROL_DIR_ENV = "EDGE_NODE_CONTROL_DIR"  # their repository load/unload log (edge_node.control)
START_TIMEOUT_S = 120.0
DIR_PREFIX = "edge-node-"  # + the supervisor's pid: its private directory
RESTART_BACKOFF_S = (1.0, 30.0)  # first delay, most


@dataclass(frozen=True)
class ProcessRole:
    """Which serving process this is: ``index`` of ``count`` (a lone node is 0 of 1)."""

    index: int = 0
    count: int = 1
    drift_dir: str = ""  # the children's drift windows meet here ("": a lone node)
    control_dir: str = ""  # their repository load/unload log ("": a lone node)

    @property
    def announces(self) -> bool:
        """Registers with the coordinators and advertises (one per node)."""
        return self.index == 0

    @property
    def shares_port(self) -> bool:
        """Binds with SO_REUSEPORT (and leaves /metrics to the supervisor)."""
        return self.count > 1

    @classmethod
    def from_env(cls, env: dict | os._Environ) -> ProcessRole:
        """The role the supervisor gave this process in ``EDGE_NODE_PROCESS``; a lone node
        without it. ``ValueError`` for a malformed value."""
        value = env.get(ROLE_ENV)
        if not value:
            return cls()
        try:
            index, count = (int(part) for part in value.split("/"))
        except ValueError:
            raise ValueError(f"{ROLE_ENV}: expected INDEX/COUNT, got {value!r}") from None
        if not 0 <= index < count:
            raise ValueError(f"{ROLE_ENV}: index must be in 0..COUNT-1, got {value!r}")
        return cls(index, count, env.get(DRIFT_DIR_ENV, ""), env.get(CONTROL_DIR_ENV, ""))


def follow_supervisor(env: dict | os._Environ) -> None:
    """In a serving process: get SIGTERM (and drain) when the supervisor dies, even by
    SIGKILL, so no child outlives it (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere a no-op).
    Exits at once if the supervisor is already gone."""
    supervisor = env.get(SUPERVISOR_ENV)
    if not supervisor or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("cannot ask to be told when the supervisor dies (errno %d)",
                    ctypes.get_errno())
    if str(os.getppid()) != supervisor:  # it died before the prctl
        raise SystemExit("edge-node: the supervisor of this serving process is gone")


class ChildStartError(ModelLoadError):
    """A serving process exited or did not become ready while the node started."""


class Supervisor:
    """Runs ``config.processes`` serving processes of ``edge-node`` on one port.

    ``argv`` are the flags the supervisor was started with; each child gets them again
    (with the same environment and config file), followed by the flags that make it one
    serving process of this node. A ``Daemon`` for ``edgeshard.lifecycle``.
    """

    def __init__(self, config: NodeConfig, argv: list[str]):
        self.config = config
        self.argv = list(argv)
        self.port = 0
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self.node_id = ""
        _remove_stale_dirs()
        self._dir = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
        self._metrics_dir = self._dir / "metrics"
        self._metrics_dir.mkdir()
        self._drift_dir = self._dir / "drift"
        self._drift_dir.mkdir()
        self._control_dir = self._dir / "control"
        self._control_dir.mkdir()
        self._children: list[subprocess.Popen | None] = [None] * config.processes
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._metrics = None  # a MetricsEndpoint, with --metrics-port
        self._restarted = None  # a Counter, once /metrics is served

    # -- children ---------------------------------------------------------------------------
    def _ready_path(self, index: int) -> Path:
        return self._dir / f"ready-{index}.json"

    def _child_args(self, index: int) -> list[str]:
        cfg = self.config
        args = [*self.argv, "--processes", "1", "--workers", str(cfg.workers),
                "--capacity", str(cfg.capacity), "--port", str(self.port or cfg.port),
                "--ready-file", str(self._ready_path(index))]
        if self.http_port is not None:
            args += ["--http-port", str(self.http_port)]
        return args

    def _spawn(self, index: int) -> subprocess.Popen:
        self._ready_path(index).unlink(missing_ok=True)
        env = {**os.environ, ROLE_ENV: f"{index}/{self.config.processes}",
               SUPERVISOR_ENV: str(os.getpid()),
               METRICS_DIR_ENV: str(self._metrics_dir), DRIFT_DIR_ENV: str(self._drift_dir),
               CONTROL_DIR_ENV: str(self._control_dir)}
        child = subprocess.Popen([sys.executable, "-m", "edge_node", *self._child_args(index)],
                                 env=env, stdin=subprocess.DEVNULL)
        log.info("serving process %d/%d started (pid %d)", index, self.config.processes,
                 child.pid)
        return child

    def _wait_ready(self, index: int, child: subprocess.Popen, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        path = self._ready_path(index)
        while time.monotonic() < deadline and not self._stopping.is_set():
            if path.exists():
                return json.loads(path.read_text())
            if child.poll() is not None:
                raise ChildStartError(
                    f"serving process {index} exited with {child.returncode} while starting "
                    "(its log lines above say why)")
            time.sleep(0.05)
        raise ChildStartError(f"serving process {index} not ready after {timeout:.0f}s")

    # -- the daemon -------------------------------------------------------------------------
    def start(self) -> None:
        """Start every serving process and the metrics endpoint; returns once all serve.
        ``BindError`` when ``--port`` is taken, ``ChildStartError`` when a child fails."""
        cfg = self.config
        if cfg.port:
            _check_free(cfg.host, cfg.port, "port")
        log.info("edge node supervisor: %d serving processes of %d worker(s) each",
                 cfg.processes, cfg.workers)
        first = self._children[0] = self._spawn(0)
        info = self._wait_ready(0, first, START_TIMEOUT_S)
        self.port, self.http_port = info["grpc_port"], info.get("http_port")
        self.node_id = info.get("node_id", "")
        for index in range(1, cfg.processes):
            self._children[index] = self._spawn(index)
        for index in range(1, cfg.processes):
            self._wait_ready(index, self._children[index], START_TIMEOUT_S)
        if cfg.metrics_port is not None:
            self.metrics_port = self._serve_metrics(cfg.metrics_host or cfg.host,
                                                    cfg.metrics_port)
        self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._watcher.start()
        log.info("edge node %s serving on %s:%d with %d processes", self.node_id, cfg.host,
                 self.port, cfg.processes)
        if cfg.ready_file:
            self._write_ready_file()

    def stop(self, grace: float | None = None) -> bool:
        """SIGTERM every child (each drains within ``grace``, default ``--grace-seconds``),
        SIGKILL what is left 5 s later; True when all drained cleanly."""
        grace = self.config.grace_seconds if grace is None else grace
        self._stopping.set()
        with self._lock:  # the live ones: one that died and awaits its restart is done
            children = [c for c in self._children if c is not None and c.poll() is None]
        for child in children:
            child.send_signal(signal.SIGTERM)
        clean = True
        deadline = time.monotonic() + grace + 5
        for child in children:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("serving process pid %d did not stop in time: killed", child.pid)
                child.kill()
                child.wait()
            clean = clean and child.returncode == 0
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        if self._metrics is not None:
            self._metrics.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        log.info("edge node stopped%s", "" if clean else " (some work was cut off)")
        return clean

    def _watch(self) -> None:
        """Restart a child that died: after 1 s, doubling to 30 s while it keeps dying
        within a minute of its start."""
        from prometheus_client import multiprocess

        count = len(self._children)
        delay = [0.0] * count
        restart_at: list[float | None] = [None] * count
        started = [time.monotonic()] * count
        while not self._stopping.wait(0.2):
            now = time.monotonic()
            for index, child in enumerate(self._children):
                if restart_at[index] is None:
                    if child is None or child.poll() is None:
                        continue
                    multiprocess.mark_process_dead(child.pid, str(self._metrics_dir))
                    first, most = RESTART_BACKOFF_S
                    delay[index] = (first if now - started[index] > 60
                                    else min(most, max(first, 2 * delay[index])))
                    restart_at[index] = now + delay[index]
                    log.warning("serving process %d (pid %d) exited with %s; restarting it "
                                "in %.0f s", index, child.pid, child.returncode, delay[index])
                elif now >= restart_at[index]:
                    with self._lock:
                        if self._stopping.is_set():
                            return
                        self._children[index] = self._spawn(index)
                    restart_at[index], started[index] = None, now
                    if self._restarted is not None:
                        self._restarted.inc()
                    if self.config.ready_file:
                        self._write_ready_file()  # its "processes" pids changed

    def _serve_metrics(self, host: str, port: int) -> int:
        from prometheus_client import Counter, Gauge
        from prometheus_client.multiprocess import MultiProcessCollector

        from edgeshard.prometheus import MetricsEndpoint

        # the supervisor's own process_* series, the children's files, and its own two
        endpoint = self._metrics = MetricsEndpoint()
        MultiProcessCollector(endpoint.registry, path=str(self._metrics_dir))
        self._restarted = Counter("edgeshard_node_process_restarts",
                                  "Serving processes restarted after they died (--processes)",
                                  registry=endpoint.registry)
        live = Gauge("edgeshard_node_serving_processes",
                     "Serving processes running (--processes; one that died and awaits "
                     "its restart is not counted)", registry=endpoint.registry)
        live.set_function(lambda: sum(1 for c in self._children
                                      if c is not None and c.poll() is None))
        return endpoint.serve(host, port)

    def _write_ready_file(self) -> None:
        path = self.config.ready_file
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({
            "grpc_port": self.port, "http_port": self.http_port,
            "metrics_port": self.metrics_port, "pid": os.getpid(), "node_id": self.node_id,
            "processes": [c.pid for c in self._children if c is not None],
        }))
        os.replace(tmp, path)


def _remove_stale_dirs() -> None:
    """Remove the private directories of supervisors that died without cleaning up
    (SIGKILL): ``edge-node-<pid>-*`` under the temporary directory, for a pid that is gone."""
    for path in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*-*"):
        try:
            pid = int(path.name[len(DIR_PREFIX):].split("-", 1)[0])
            os.kill(pid, 0)
        except ValueError:
            continue  # not one of ours
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue  # alive, another user's


def _check_free(host: str, port: int, field: str) -> None:
    """``BindError`` naming ``field`` when ``host:port`` is taken. The children bind with
    SO_REUSEPORT, which would share a port another such server holds; this bind, without
    it, fails on any listener instead."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise BindError(field, f"{host}:{port}", exc.strerror or str(exc)) from None
