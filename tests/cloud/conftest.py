"""A real Seldon MLServer serving the cloud model: the cloud tier for tests.

MLServer lives in its own venv (``.venv-mlserver``, made by ``scripts/setup_mlserver.sh``)
and runs as a separate process: it cannot share a process (or a venv) with tritonclient.
Its model is ``mnist_cloud`` served by ``tests/cloud/mlserver_runtime.py``: input ``image``
UINT8 [N,28,28], output ``probabilities`` FP32 [N,10] only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import edgeshard_models

ROOT = Path(__file__).resolve().parents[2]
MLSERVER_VENV = ROOT / ".venv-mlserver"
MLSERVER_BIN = MLSERVER_VENV / "bin" / "mlserver"
RUNTIME_DIR = Path(__file__).resolve().parent
CLOUD_MODEL = edgeshard_models.CLOUD_MODEL  # "mnist_cloud"
READY_TIMEOUT_S = 90.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_repository(directory: Path, model: str = CLOUD_MODEL) -> Path:
    """An MLServer model repository serving ``model`` with the LiteRT runtime."""
    directory.mkdir(parents=True, exist_ok=True)
    # No port keys: ports come from MLSERVER_*_PORT (settings.json would win over them).
    (directory / "settings.json").write_text(json.dumps({
        "debug": False,
        "server_name": "mlserver-cloud",
        "load_models_at_startup": True,
    }, indent=2))
    tflite = edgeshard_models.repository_path() / CLOUD_MODEL / "1" / "model.tflite"
    (directory / model).mkdir(exist_ok=True)
    (directory / model / "model-settings.json").write_text(json.dumps({
        "name": model,
        "implementation": "mlserver_runtime.LiteRTClassifier",
        "platform": "tflite",
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        "parameters": {"uri": str(tflite), "version": "1"},
    }, indent=2))
    return directory


class MLServerCloud:
    """An ``mlserver start`` process on fixed loopback ports; stop() and start() reuse them."""

    def __init__(self, repository: Path, log_path: Path, model: str = CLOUD_MODEL):
        self.repository = repository
        self.log_path = log_path
        self.model = model
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None  # of the last start()

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER_")}
        env.pop("VIRTUAL_ENV", None)
        env.update(
            MLSERVER_HOST="127.0.0.1",
            MLSERVER_HTTP_PORT=str(self.http_port),
            MLSERVER_GRPC_PORT=str(self.grpc_port),
            MLSERVER_METRICS_PORT=str(self.metrics_port),
            PYTHONPATH=str(RUNTIME_DIR),  # mlserver_runtime.py, and nothing of edgeshard's
            PYTHONUNBUFFERED="1",
        )
        return env

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _model_ready(self) -> bool:
        url = f"{self.http_url}/v2/models/{self.model}/ready"
        try:
            with _NO_PROXY.open(url, timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start the server and wait until the model (not just the server) is ready."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("MLServer is already running")
        began = time.monotonic()
        with self.log_path.open("a") as log:
            log.write(f"\n=== mlserver start {self.repository} (grpc {self.grpc_port}, "
                      f"http {self.http_port}, metrics {self.metrics_port}) ===\n")
            log.flush()
            # Own session: stop() signals the whole group, inference workers included.
            self.process = subprocess.Popen(
                [str(MLSERVER_BIN), "start", str(self.repository)],
                cwd=self.repository, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = began + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"MLServer exited with {code} before {self.model} was ready;"
                                   f" log {self.log_path}:\n{self.log_tail()}")
            if self._model_ready():
                self.startup_s = time.monotonic() - began
                return
            time.sleep(0.1)
        self.stop(graceful=False)
        raise RuntimeError(f"MLServer's {self.model} not ready after {timeout:.0f} s;"
                           f" log {self.log_path}:\n{self.log_tail()}")

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, graceful: bool = True, timeout: float = 15.0) -> None:
        """Take the cloud down: SIGTERM (MLServer drains) or, graceful=False, SIGKILL (a crash).

        Either way every process of the group is gone when this returns.
        """
        if self.process is None:
            return
        if graceful and self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # Workers and MLServer's resource tracker too, whatever became of the main process.
        self._signal_group(signal.SIGKILL)
        self.process.wait(5)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture(scope="session")
def mlserver_cloud(tmp_path_factory):
    """A running MLServer with ``mnist_cloud`` (one per session); ``.grpc_address`` to call it.

    Skips when ``.venv-mlserver`` is missing outside CI; in CI (``CI`` set) that is a
    failure, since ``.ci/run`` runs ``scripts/setup_mlserver.sh`` first.
    """
    if not MLSERVER_BIN.exists():
        message = (f"MLServer is not installed: {MLSERVER_BIN} is missing;"
                   " run `bash scripts/setup_mlserver.sh` to create .venv-mlserver")
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(message + " (CI is set: the setup script must have run)")
        pytest.skip(message)
    workdir = tmp_path_factory.mktemp("mlserver")
    cloud = MLServerCloud(write_repository(workdir / "repository"), workdir / "mlserver.log")
    try:
        cloud.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    print(f"\nMLServer {CLOUD_MODEL} ready at {cloud.grpc_address} in {cloud.startup_s:.1f} s")
    yield cloud
    cloud.stop()


@pytest.fixture
def cloud_up(mlserver_cloud):
    """The session's MLServer, restarted first if an earlier test left it down."""
    if not mlserver_cloud.running:
        mlserver_cloud.start()
    return mlserver_cloud
