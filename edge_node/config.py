"""Edge node configuration: one frozen dataclass, loaded from flags > EDGESHARD_* env > TOML file.

Every field has a flag ``--field-name``, an environment variable ``EDGESHARD_FIELD_NAME``
and a key ``field_name`` in the config file (top level or under ``[edge_node]``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_node.errors import ConfigError

ENV_PREFIX = "EDGESHARD_"


@dataclass(frozen=True)
class NodeConfig:
    """Everything an edge node process needs to know at start-up."""

    model_repository: Path = field(default=None, metadata={"help": "model repository directory"})
    """Directory laid out as ``<model>/config.toml`` and ``<model>/<version>/model.tflite``."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind the gRPC server"})
    """Address the gRPC server binds; ``0.0.0.0`` for every interface."""

    port: int = field(default=8001, metadata={"help": "gRPC port (0 picks a free port)"})
    """gRPC port; 0 picks a free one (read it back from the log or --ready-file)."""

    metrics_port: int | None = field(
        default=None, metadata={"help": "Prometheus /metrics port (0 picks one; unset: off)"}
    )
    """Port of the Prometheus HTTP endpoint; None disables it, 0 picks a free port."""

    metrics_host: str | None = field(
        default=None, metadata={"help": "address for the metrics endpoint (default: --host)"}
    )
    """Address the metrics endpoint binds; defaults to ``host``."""

    node_id: str = field(default="", metadata={"help": "node name reported in responses"})
    """Name of this node in responses and metrics; defaults to ``<hostname>:<port>``."""

    workers: int = field(default=0, metadata={"help": "inference threads (0: one per core)"})
    """Worker threads, each with its own interpreter per model version; 0 = CPU count."""

    interpreter_threads: int = field(default=1, metadata={"help": "threads per interpreter"})
    """Threads each TFLite interpreter may use (XNNPACK)."""

    max_queue_size: int = field(
        default=256, metadata={"help": "queued requests before RESOURCE_EXHAUSTED"}
    )
    """Requests waiting for a worker beyond which new ones are refused with RESOURCE_EXHAUSTED."""

    max_batch_delay_ms: float = field(
        default=0.0, metadata={"help": "how long a worker waits to fill a batch (ms)"}
    )
    """Dynamic batching delay: 0 batches only what is already queued (TF Serving's advice)."""

    grace_seconds: float = field(
        default=10.0, metadata={"help": "SIGTERM drain time for in-flight requests (s)"}
    )
    """On SIGTERM: health goes NOT_SERVING, in-flight requests get this long to finish."""

    max_message_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"help": "largest gRPC message accepted (bytes)"}
    )
    """gRPC max send/receive message size; larger requests get RESOURCE_EXHAUSTED."""

    ready_file: Path | None = field(
        default=None, metadata={"help": "write {grpc_port, metrics_port, pid} JSON when ready"}
    )
    """When set, a JSON file with the bound ports is written once the node is SERVING."""

    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING, ERROR"})
    """Logging level of the process."""

    def __post_init__(self) -> None:
        if self.model_repository is None:
            raise ConfigError(
                "model_repository: required (--model-repository DIR, "
                "EDGESHARD_MODEL_REPOSITORY or model_repository in the config file)"
            )
        object.__setattr__(self, "model_repository", Path(self.model_repository))
        if self.ready_file is not None:
            object.__setattr__(self, "ready_file", Path(self.ready_file))
        for name in ("port",):
            _check_port(name, getattr(self, name))
        if self.metrics_port is not None:
            _check_port("metrics_port", self.metrics_port)
        _check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        _check(
            self.interpreter_threads >= 1,
            "interpreter_threads",
            f"must be >= 1, got {self.interpreter_threads}",
        )
        _check(self.max_queue_size >= 1, "max_queue_size", "must be >= 1")
        _check(self.max_batch_delay_ms >= 0, "max_batch_delay_ms", "must be >= 0")
        _check(self.grace_seconds >= 0, "grace_seconds", "must be >= 0")
        _check(self.max_message_bytes >= 1024, "max_message_bytes", "must be >= 1024")
        _check(
            self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
            "log_level",
            f"must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}",
        )
        if not self.workers:
            object.__setattr__(self, "workers", max(1, os.cpu_count() or 1))

    def resolved_node_id(self, bound_port: int) -> str:
        return self.node_id or f"{socket.gethostname()}:{bound_port}"


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")


def _check_port(name: str, value: int) -> None:
    _check(0 <= value <= 65535, name, f"must be a port in 0..65535, got {value}")


def _coerce(f: dataclasses.Field, raw: Any, source: str) -> Any:
    """Convert a string (env) or TOML value to the field's type, naming the source on error."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if raw is None:
            return None
        if "int" in kind and "Path" not in kind:
            if isinstance(raw, bool):
                raise ValueError("boolean given")
            return int(raw)
        if "float" in kind:
            return float(raw)
        if "Path" in kind:
            return Path(str(raw))
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{f.name}: invalid value {raw!r} from {source} ({exc})") from None


def load_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file; keys at top level or under ``[edge_node]``."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
    section = data.get("edge_node", data)
    known = {f.name for f in fields(NodeConfig)}
    unknown = sorted(k for k in section if k not in known and k != "edge_node")
    if unknown:
        raise ConfigError(
            f"config: unknown key(s) {', '.join(unknown)} in {path}; "
            f"known: {', '.join(sorted(known))}"
        )
    return dict(section)


def build(
    flags: Mapping[str, Any], env: Mapping[str, str], config_file: Path | None = None
) -> NodeConfig:
    """Merge sources with precedence flags > environment > file > defaults."""
    values: dict[str, Any] = {}
    file_values = load_file(config_file) if config_file else {}
    for f in fields(NodeConfig):
        env_name = ENV_PREFIX + f.name.upper()
        if flags.get(f.name) is not None:
            values[f.name] = _coerce(f, flags[f.name], f"--{f.name.replace('_', '-')}")
        elif env.get(env_name) not in (None, ""):
            values[f.name] = _coerce(f, env[env_name], env_name)
        elif f.name in file_values:
            values[f.name] = _coerce(f, file_values[f.name], str(config_file))
    return NodeConfig(**values)
