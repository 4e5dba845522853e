"""Edge node configuration: one frozen dataclass, loaded from flags > EDGESHARD_* env > TOML file.

Every field has a flag ``--field-name``, an environment variable ``EDGESHARD_FIELD_NAME``
and a key ``field_name`` in the config file (top level or under ``[edge_node]``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeshard import settings
from edgeshard.auth import check_token
from edgeshard.settings import SettingsError, check, check_port
from edgeshard.tls import TLSFiles, certificate_common_name, check_server_settings


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

    http_port: int | None = field(
        default=None, metadata={"help": "Open Inference Protocol HTTP/REST port on --host "
                                        "(0 picks one; unset: off)"}
    )
    """Port of the KServe v2 / Triton HTTP/REST binding (same host, TLS and message limit
    as gRPC); None disables it, 0 picks a free port (reported in the ready file)."""

    node_id: str = field(default="", metadata={"help": (
        "node name reported in responses and registered with coordinators (default: the "
        "--tls-cert's common name, else HOST:PORT); a join token's name must match it")})
    """Name of this node in responses and metrics; defaults to ``<hostname>:<port>``."""

    workers: int = field(default=0, metadata={"help": (
        "inference threads per serving process (0: one per core, divided among --processes)")})
    """Worker threads, each with its own interpreter per model version; 0 = CPU count."""

    processes: int = field(default=1, metadata={"help": (
        "serving processes sharing the gRPC (and HTTP) port with SO_REUSEPORT, each with its "
        "own interpreters: the node past Python's GIL (0: one per core)")})
    """Serving processes: 1 serves in this process; more start that many children of a
    supervisor that shares the port between them, aggregates their metrics, restarts one
    that dies and drains them all on SIGTERM (``edge_node.supervisor``). ``workers`` is per
    process (0: the cores divided among the processes)."""

    max_connection_age_s: float = field(default=30.0, metadata={"help": (
        "with --processes > 1: close each client connection gracefully after this long "
        "(+-10%%), so clients reconnect and the kernel spreads them over the processes "
        "again, e.g. after a restart (0: never)")})
    """With several serving processes the kernel hands each connection to one of them, once;
    gRPC's ``max_connection_age`` sends GOAWAY after this long (calls in flight and open
    streams finish; new calls go on a new connection), so the spread follows restarts."""

    interpreter_threads: int = field(default=1, metadata={"help": "threads per interpreter"})
    """Threads each TFLite interpreter may use (XNNPACK)."""

    max_queue_size: int = field(
        default=256, metadata={"help": "queued requests before RESOURCE_EXHAUSTED"}
    )
    """Requests waiting for a worker beyond which new ones are refused with RESOURCE_EXHAUSTED."""

    max_infer_streams: int = field(
        default=8, metadata={"help": "open ModelStreamInfer streams per serving process before "
                             "RESOURCE_EXHAUSTED (0: streaming off)"}
    )
    """Triton's bidirectional ``ModelStreamInfer`` streams served at once (each holds a gRPC
    handler thread while open; up to 16 requests of each run concurrently); 0 turns
    streaming off."""

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
        default=None,
        metadata={"help": "write {grpc_port, http_port, metrics_port, pid, node_id} JSON when "
                          "ready (with --processes: also the children's pids)"}
    )
    """When set, a JSON file with the bound ports is written once the node is SERVING."""

    capacity: int = field(
        default=0, metadata={"help": "outstanding requests the node advertises, all its "
                             "processes together (0: 4 x workers x processes)"}
    )
    """How many requests the coordinator may keep in flight here; 0 = 4 per worker."""

    coordinator: tuple[str, ...] = field(
        default=(), metadata={"help": "coordinator HOST:PORT to register with; several: "
                              "repeat the flag or separate them with commas"}
    )
    """Coordinators (``HOST:PORT``) the node registers with and sends heartbeats with load
    to, each on its own (one that is down delays no other); empty = none. A string is
    split at commas (flags, env, or a TOML string or array)."""

    advertise: bool = field(default=False, metadata={"help": "announce the node by zeroconf"})
    """Register a ``_edgeshard._tcp.local.`` service so ``edge-coordinator --discover``
    finds the node."""

    advertise_address: str | None = field(
        default=None, metadata={"help": "address others use to reach this node"}
    )
    """Address put in registrations and adverts; defaults to ``host`` (127.0.0.1 when
    ``host`` is 0.0.0.0)."""

    mdns_interface: tuple[str, ...] = field(
        default=(), metadata={"help": "IPv4 address of an interface to advertise on"}
    )
    """Interfaces (by IPv4 address) for zeroconf; empty = every interface."""

    tls_cert: Path | None = field(
        default=None, metadata={"help": "PEM certificate (chain) to serve TLS with and to "
                                "present to coordinators"})
    """This node's certificate: the gRPC server speaks TLS with it, and registration with
    coordinators presents it as the client certificate. Replaced files are served from
    the next connection on, without a restart."""

    tls_key: Path | None = field(default=None,
                                 metadata={"help": "PEM private key of --tls-cert"})
    """The private key of ``tls_cert`` (unencrypted PEM; keep it 0600)."""

    tls_ca: Path | None = field(
        default=None, metadata={"help": "PEM CA bundle: clients must present a certificate "
                                "it signed (mTLS), and coordinators are verified against it"})
    """With it the server requires client certificates signed by this CA (mutual TLS),
    and the node verifies its coordinators' certificates against it."""

    join_token: str | None = field(default=None, metadata={"help": (
        "token proving this node's id to coordinators that require join tokens (prefer "
        "EDGESHARD_JOIN_TOKEN or the config file: flags show in ps)")})
    """Sent as ``authorization: Bearer`` on Register and Heartbeat; the coordinator's
    token file holds its SHA-256 with role ``node`` and ``name`` = this node's id."""

    insecure: bool = field(
        default=False, metadata={"help": "allow plaintext gRPC on a non-loopback --host"})
    """Without TLS a node bound to anything but loopback refuses to start unless this is
    set."""

    trust_key: tuple[Path, ...] = field(
        default=(), metadata={"help": "Ed25519 public key (PEM, or raw/base64) trusted to "
                              "sign model versions, or a directory of *.pub keys; a signed "
                              "version is verified against these", "metavar": "PATH"})
    """Public keys whose signatures on ``manifest.json`` are accepted (several: key
    rotation). A file, or a directory whose ``*.pub`` files are each a key. With any, a
    signed version that does not verify is refused even without ``require_signed``."""

    require_signed: bool = field(
        default=False, metadata={"help": "serve only model versions whose manifest.json is "
                                 "signed by a --trust-key and matches their files"})
    """Refuse versions without a manifest, unsigned, signed by an untrusted key, or whose
    files (model, calibration, the model's config) differ from the signed manifest; the
    newest version that passes serves. Needs ``trust_key``."""

    model_poll_s: float = field(default=0.0, metadata={"help": (
        "seconds between scans of the model repository for new or removed versions "
        "(0: only at start and on RepositoryModelLoad)")})
    """Hot swap: a new version directory is loaded, checked, warmed up and then served;
    a removed one is unloaded once its requests finish (docs/OPERATIONS.md, Hot swap)."""

    keep_versions: int = field(default=2, metadata={"help": (
        "newest versions of each model kept loaded (older ones are unloaded; pinned "
        "requests and instant rollback use the kept ones)")})
    """How many of each model's newest loaded versions stay loaded, at start and after a
    swap; requests pinned to an unloaded version get NOT_FOUND."""

    drift_sample_every: int = field(default=1, metadata={"help": (
        "drift statistics on every k-th request of a profiled model version (1: every "
        "request; 0: off)")})
    """Requests of a version with a ``profile.json`` whose inputs and confidences enter
    the drift window: 1 in this many (``edge_node.drift``); 0 keeps no statistics."""

    drift_window_items: int = field(default=1000, metadata={"help": (
        "items in each rolling drift window (per model version and segment)")})
    """The newest this many items (at least) make a drift window; older ones leave it."""

    drift_max_segments: int = field(default=16, metadata={"help": (
        "segments with their own drift window per model version (later ones share one)")})
    """Distinct ``segment`` request parameters kept apart per version; further segments
    are pooled under ``_other`` so memory and heartbeats stay bounded."""

    delegate: str | None = field(default=None, metadata={"help": (
        "external TFLite delegate library (path or soname, e.g. libedgetpu.so.1) for every "
        "model whose config.toml names no [delegate]; a model it cannot run stays on the CPU"),
        "metavar": "LIBRARY"})
    """An external delegate plugin (Edge TPU, GPU, Arm NN...). Each model version is tried
    on it at load; when the library is missing, is not a delegate, or cannot run the model,
    the version runs on the CPU (XNNPACK) and the log, the model config's ``delegate`` /
    ``delegate_fallback`` parameters and ``edgeshard_node_model_runs_on`` say so."""

    delegate_option: tuple[str, ...] = field(default=(), metadata={"help": (
        "KEY=VALUE option for --delegate (repeat the flag, or separate with commas)"),
        "metavar": "KEY=VALUE"})
    """Options passed to the ``delegate`` plugin, e.g. ``device=usb`` for the Edge TPU."""

    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING, ERROR"})
    """Logging level of the process."""

    def __post_init__(self) -> None:
        if self.model_repository is None:
            raise SettingsError(
                "model_repository: required (--model-repository DIR, "
                "EDGESHARD_MODEL_REPOSITORY or model_repository in the config file)"
            )
        object.__setattr__(self, "model_repository", Path(self.model_repository))
        if self.ready_file is not None:
            object.__setattr__(self, "ready_file", Path(self.ready_file))
        for name in ("port",):
            check_port(name, getattr(self, name))
        for name in ("metrics_port", "http_port"):
            if getattr(self, name) is not None:
                check_port(name, getattr(self, name))
        check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        check(0 <= self.max_connection_age_s <= 86400, "max_connection_age_s",
              f"must be in 0..86400 seconds (0: never), got {self.max_connection_age_s}")
        check(0 <= self.processes <= 256, "processes",
              f"must be in 0..256 (0: one per core), got {self.processes}")
        check(
            self.interpreter_threads >= 1,
            "interpreter_threads",
            f"must be >= 1, got {self.interpreter_threads}",
        )
        check(self.max_queue_size >= 1, "max_queue_size", "must be >= 1")
        check(0 <= self.max_infer_streams <= 1024, "max_infer_streams", "must be in 0..1024")
        check(0 <= self.model_poll_s <= 86400, "model_poll_s", "must be in 0..86400 seconds")
        check(self.keep_versions >= 1, "keep_versions", "must be >= 1")
        check(self.drift_sample_every >= 0, "drift_sample_every",
              f"--drift-sample-every must be >= 0 (0: off), got {self.drift_sample_every}")
        check(1 <= self.drift_window_items <= 1_000_000, "drift_window_items",
              f"--drift-window-items must be in 1..1000000, got {self.drift_window_items}")
        check(1 <= self.drift_max_segments <= 1000, "drift_max_segments",
              f"--drift-max-segments must be in 1..1000, got {self.drift_max_segments}")
        check(self.max_batch_delay_ms >= 0, "max_batch_delay_ms", "must be >= 0")
        check(self.grace_seconds >= 0, "grace_seconds", "must be >= 0")
        check(self.max_message_bytes >= 1024, "max_message_bytes", "must be >= 1024")
        check(
            self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
            "log_level",
            f"must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}",
        )
        check(self.capacity >= 0, "capacity", "must be >= 0")
        object.__setattr__(self, "coordinator",
                           settings.address_list("coordinator", self.coordinator))
        for name in ("tls_cert", "tls_key", "tls_ca"):
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value) if value else None)
        check_server_settings(self.host, self.tls_files, self.insecure)
        if self.join_token is not None:
            object.__setattr__(self, "join_token", check_token(self.join_token, "join_token"))
        object.__setattr__(self, "trust_key", tuple(Path(p) for p in self.trust_key))
        check(bool(self.trust_key) or not self.require_signed, "require_signed",
              "needs at least one --trust-key (EDGESHARD_TRUST_KEY, trust_key in the config "
              "file): the public key(s) whose signatures to accept")
        raw = self.delegate_option
        options = tuple(o.strip() for part in ([raw] if isinstance(raw, str) else raw)
                        for o in str(part).split(",") if o.strip())
        for option in options:
            check("=" in option and option.split("=", 1)[0].strip() != "", "delegate_option",
                  f"must be KEY=VALUE, got {option!r}")
        object.__setattr__(self, "delegate_option", options)
        check(self.delegate is None or self.delegate.strip() != "", "delegate",
              "must name a library (a path or soname); leave it unset for the CPU")
        check(not options or self.delegate is not None, "delegate_option",
              "needs --delegate (the library the options are for)")
        cores = max(1, os.cpu_count() or 1)
        if not self.processes:
            object.__setattr__(self, "processes", cores)
        if not self.workers:
            object.__setattr__(self, "workers", max(1, cores // self.processes))
        if not self.capacity:  # the whole node's: what all its processes serve together
            object.__setattr__(self, "capacity", 4 * self.workers * self.processes)

    @property
    def delegate_spec(self):
        """The ``delegate`` with its options (``edge_node.runtime.DelegateSpec``), or None
        for the CPU."""
        from edge_node.runtime import DelegateSpec  # the runtime loads only in the node

        if self.delegate is None:
            return None
        pairs = (o.split("=", 1) for o in self.delegate_option)
        return DelegateSpec(self.delegate, {k.strip(): v.strip() for k, v in pairs})

    @property
    def tls_files(self) -> TLSFiles:
        """The TLS files: the server's certificate and CA, also used to dial coordinators."""
        return TLSFiles(self.tls_cert, self.tls_key, self.tls_ca)

    @property
    def wildcard_host(self) -> bool:
        """True when ``host`` is a wildcard (``0.0.0.0``, ``::``, empty): every interface."""
        return self.host in ("0.0.0.0", "", "::")

    @property
    def public_host(self) -> str:
        """Host others reach this node at: ``advertise_address``, else ``host``.

        A wildcard ``host`` (``0.0.0.0``, ``::``, empty) gives ``127.0.0.1``.
        """
        if self.advertise_address:
            return self.advertise_address
        return "127.0.0.1" if self.wildcard_host else self.host

    def resolved_node_id(self, bound_port: int) -> str:
        """``node_id``; else the common name of ``tls_cert`` (coordinators that verify
        client certificates admit a node under that name only); else
        ``<hostname>:<bound_port>``."""
        if self.node_id:
            return self.node_id
        if self.tls_cert is not None:
            name = certificate_common_name(self.tls_cert)
            if name:
                return name
        return f"{socket.gethostname()}:{bound_port}"


def build(flags: Mapping[str, Any], env: Mapping[str, str],
          config_file: Path | None = None) -> NodeConfig:
    """Merge sources with precedence flags > environment > file > defaults."""
    return settings.build(NodeConfig, flags, env, config_file, section="edge_node")
