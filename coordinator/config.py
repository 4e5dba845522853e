"""Coordinator configuration: one frozen dataclass, flags > EDGESHARD_* env > TOML file.

Config file keys sit at top level or under ``[coordinator]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from coordinator.cascade.rules import CascadeRule, parse_audit, parse_cascade
from edgeshard import settings
from edgeshard.settings import check, check_port
from edgeshard.tls import TLSFiles, check_server_settings


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything the coordinator process needs at start-up."""

    host: str = field(default="127.0.0.1", metadata=_help("address to bind the gRPC server"))
    """Address of the coordinator's gRPC server (OIP front, Fleet and Jobs services)."""

    port: int = field(default=8000, metadata=_help("gRPC port (0 picks a free port)"))
    """gRPC port; 0 picks a free one (read it back from the log or --ready-file)."""

    node: tuple[str, ...] = field(default=(), metadata=_help("seed node HOST:PORT"))
    """Static seed nodes; admitted after a health check like any other candidate."""

    discover: bool = field(default=False, metadata=_help("find nodes by zeroconf (mDNS)"))
    """Browse ``_edgeshard._tcp.local.`` for nodes started with ``edge-node --advertise``."""

    mdns_interface: tuple[str, ...] = field(
        default=(), metadata=_help("IPv4 address of an interface to browse on (default all)")
    )
    """Interfaces (by IPv4 address) for zeroconf; empty = every interface."""

    state_dir: Path = field(default=Path("edgeshard-state"),
                            metadata=_help("directory of the SQLite job state"))
    """Jobs, shards and results live in ``state_dir/jobs.sqlite3``; restart on the same
    directory resumes unfinished jobs."""

    state_url: str | None = field(
        default=None, metadata=_help("postgresql://USER@HOST:PORT/DB: share a PostgreSQL job "
                                     "store with other coordinator replicas (default: SQLite "
                                     "in --state-dir)"))
    """When set, jobs, shards, results and the spool live in this PostgreSQL database,
    shared by every coordinator given the same URL (replicas); ``state_dir`` is unused."""

    replica_timeout_s: float = field(
        default=5.0, metadata=_help("a replica silent this long is dead: its leases go back "
                                    "to the queue (PostgreSQL only)"))
    """Replicas heartbeat in the shared store every second; one not seen for this long
    has died and the shards its pullers held are re-queued at once."""

    metrics_port: int | None = field(
        default=None, metadata=_help("Prometheus /metrics port (0 picks one; unset: off)")
    )
    """Port of the Prometheus HTTP endpoint; None disables it."""

    metrics_host: str | None = field(default=None, metadata=_help("metrics address"))
    """Address the metrics endpoint binds; defaults to ``host``."""

    http_port: int | None = field(
        default=None, metadata=_help("Open Inference Protocol HTTP/REST port on --host "
                                     "(0 picks one; unset: off)"))
    """Port of the KServe v2 / Triton HTTP/REST binding (same host, TLS, bearer tokens and
    message limit as gRPC); None disables it, 0 picks a free port (in the ready file)."""

    grace_seconds: float = field(default=10.0, metadata=_help("SIGTERM drain time (s)"))
    """On SIGTERM: NOT_SERVING, then in-flight requests get this long to finish."""

    heartbeat_interval_s: float = field(default=1.0, metadata=_help("node heartbeat period (s)"))
    """How often registered nodes are asked to send heartbeats."""

    probe_interval_s: float = field(default=1.0, metadata=_help("health probe period (s)"))
    """How often the coordinator health-checks each known node."""

    probe_timeout_s: float = field(default=1.0, metadata=_help("health probe deadline (s)"))
    """Deadline of one health check; a hung (e.g. SIGSTOPped) node fails it."""

    suspect_after_s: float = field(default=3.0, metadata=_help("silence before suspect (s)"))
    """A node with no successful probe or beat for this long gets no new work."""

    dead_after_s: float = field(default=8.0, metadata=_help("silence before dead (s)"))
    """A node silent this long is dead: its job shards are re-queued."""

    expire_after_s: float = field(default=600.0,
                                  metadata=_help("silence before a dead node is forgotten (s)"))
    """A dead node (not a --node seed) silent this long leaves the node list; it may
    register again. Seeds stay, to be probed."""

    request_timeout_s: float = field(
        default=30.0, metadata=_help("deadline for forwarded requests that carry none (s)")
    )
    """Deadline used for a forwarded inference call when the client set none."""

    connections_per_process: int = field(
        default=4, metadata=_help("TCP connections per serving process of a node that "
                                  "runs several (edge-node --processes)"))
    """The kernel gives each connection to a node of several serving processes to one of
    them at random: this many per process (at most 64 per node) reach them all."""

    max_in_flight: int = field(default=512, metadata=_help("coordinator-wide request bound"))
    """Online requests in the coordinator at once (forwarded or waiting for room); beyond it
    RESOURCE_EXHAUSTED is answered at once."""

    max_queued: int = field(default=32, metadata=_help("online requests that may wait for room"))
    """Online requests that may wait (within their deadline) while every node is at
    capacity; one more is refused with RESOURCE_EXHAUSTED at once. Waiting requests hold a
    handler thread, so this stays well below the server's 32 + max_streams threads."""

    rollout_interval_s: float = field(default=1.0,
                                      metadata=_help("how often canaries are judged (s)"))
    """Period of the canary comparison (and of reading other replicas' rollout decisions);
    a canary is also judged as soon as its sample reaches the minimum."""

    shadow_concurrency: int = field(default=4,
                                    metadata=_help("shadow requests in flight to canaries"))
    """Requests mirrored to canaries at once; a mirror beyond it is dropped, never queued."""

    max_streams: int = field(default=16, metadata=_help("concurrent Submit uploads"))
    """Concurrent Submit streams; one more is answered RESOURCE_EXHAUSTED. Each holds a
    handler thread while it uploads (the server has 32 + this many), so unary calls,
    heartbeats above all, always find one."""

    max_followers: int = field(
        default=4096, metadata=_help("concurrent Watch and FetchResults streams, each"))
    """Concurrent Watch and FetchResults streams, each; one more is answered
    RESOURCE_EXHAUSTED. They wait on the server's event loop and hold no thread, so
    thousands cost only memory (a few KB each)."""

    epsilon: float = field(default=0.25, metadata=_help("bounded-load slack for routing keys"))
    """Consistent hashing with bounded loads: a node takes at most (1+ε)·average load."""

    shard_size: int = field(default=64, metadata=_help("items per job shard"))
    """Default items per shard (one batched request to a node)."""

    shards_per_node: int = field(default=2, metadata=_help("concurrent shards per node"))
    """Shards a node may hold at once (its pull window)."""

    shard_deadline_s: float = field(default=5.0, metadata=_help("deadline of one shard call (s)"))
    """A shard not answered within this is re-queued for another node."""

    lease_s: float = field(default=15.0, metadata=_help("shard lease length (s)"))
    """Safety net: a shard lease older than this is re-queued even if no call failed."""

    max_message_bytes: int = field(default=64 * 1024 * 1024,
                                   metadata=_help("largest gRPC message (bytes)"))
    """gRPC max send/receive message size."""

    cloud: str | None = field(default=None, metadata=_help("cloud tier HOST:PORT (any OIP server)"))
    """The cloud tier for escalations: Triton, KServe, MLServer or an edge-node serving the
    big model. Unset: no cascade, the edge answers everything."""

    cascade: tuple[str, ...] = field(
        default=(), metadata=_help("EDGE_MODEL=CLOUD_MODEL: escalate this model's items"))
    """Which edge models escalate, and to which model name at the cloud tier."""

    escalation: tuple[str, ...] = field(
        default=(), metadata=_help("MODEL=POLICY:THRESHOLD (e.g. mnist_edge=max_prob:0.9)"))
    """Escalation rule per edge model; policies: max_prob, margin, entropy,
    normalized_entropy, random, never, always. Without one: normalized_entropy:0.5
    (Sedna's CrossEntropy default). ``edge-coordinator calibrate`` picks a threshold."""

    cloud_output: str = field(default="probabilities",
                              metadata=_help("cloud answer from 'probabilities' or 'label'"))
    """Which cloud outputs carry the answer: ``probabilities`` (argmax and max) or
    ``label`` (with ``confidence``)."""

    cloud_timeout_s: float = field(default=5.0, metadata=_help("deadline of a cloud call (s)"))
    """Deadline of one cloud call; an online request also never waits past its own."""

    cloud_max_batch: int = field(default=32, metadata=_help("items per cloud call"))
    """Escalations are sent in batches of at most this many items."""

    cloud_concurrency: int = field(default=4, metadata=_help("cloud calls in flight at once"))
    """Concurrent cloud calls; more wait (within their deadline) or go to the spool."""

    cloud_budget_per_s: float | None = field(
        default=None, metadata=_help("escalated items per second the cloud may see"))
    """Rate budget (token bucket, burst = one second's worth); items over it are spooled
    and replayed within the budget. Unset: unlimited."""

    cloud_cost_per_call: float = field(default=0.0, metadata=_help("cost of one cloud call"))
    """Counted in metrics and reports (currency of your choice)."""

    cloud_cost_per_item: float = field(default=0.0, metadata=_help("cost of one cloud item"))
    """Counted in metrics and reports."""

    breaker_failures: int = field(default=5, metadata=_help("cloud failures that open the breaker"))
    """Consecutive cloud failures that open the circuit breaker."""

    breaker_reset_s: float = field(default=5.0, metadata=_help("open breaker retry delay (s)"))
    """How long an open breaker waits before letting a trial call through."""

    spool_max_items: int = field(default=100_000, metadata=_help("spool bound (items)"))
    """Escalations waiting for the cloud; when full, new ones keep their edge answer."""

    spool_max_bytes: int = field(default=256 * 1024 * 1024,
                                 metadata=_help("spool bound (payload bytes)"))
    """Payload bytes the spool may hold."""

    spool_ttl_s: float = field(default=24 * 3600.0, metadata=_help("spooled item lifetime (s)"))
    """After this long in the spool an escalation's edge answer becomes final (degraded)."""

    drift_psi_warn: float = field(default=0.2, metadata=_help(
        "population stability index at which a drift window warns (0.1: moderate shift, "
        "0.25: significant)"))
    """A (model, version, segment) window whose input or confidence PSI against the
    version's reference profile reaches this is drifted (gauge, log warning)."""

    drift_ks_warn: float = field(default=0.2, metadata=_help(
        "Kolmogorov-Smirnov statistic (0..1) at which a drift window warns"))
    """A window whose input or confidence KS statistic reaches this is drifted."""

    drift_min_items: int = field(default=100, metadata=_help(
        "items a drift window needs before it is judged"))
    """Below this many items (over all nodes) a window's PSI is mostly sampling noise:
    it is not judged, and its PSI and KS gauges are not set."""
    audit: tuple[str, ...] = field(
        default=(), metadata={**_help("MODEL=RATE: also ask the cloud about this share (0..1, "
                                      "e.g. 0.01) of MODEL's confidently answered items"),
                              "metavar": "MODEL=RATE"})
    """Audit sampling per cascaded model: a share of the items the edge answered with
    confidence goes to the cloud too, in the background (the answer never waits), within
    the cloud budget and after escalations; picked by a stable hash of the item id."""

    audit_queue: int = field(default=256, metadata=_help("audited items waiting for the cloud"))
    """Audited items queued for the cloud at most; more are dropped (counted), never waited for."""

    agreement_window: int = field(default=500,
                                  metadata=_help("last items edge/cloud agreement is over"))
    """Agreement is the share of the last this many compared items (per model, version,
    segment and source: audit or escalated) whose edge label is the cloud's."""

    agreement_min_items: int = field(default=50,
                                     metadata=_help("items before agreement is reported"))
    """Items a window needs before its agreement gauge is set and can warn."""

    agreement_warn: float = field(default=0.9,
                                  metadata=_help("warn when edge/cloud agreement falls below"))
    """A warning is logged (once per crossing) and the ``_low`` gauge set while agreement
    is below this fraction."""

    examples_keep: int = field(default=10_000,
                               metadata=_help("hard examples kept per model (newest)"))
    """Escalated and audited items with the cloud's answers kept per model in the job store
    for `edge-coordinator export-examples`; older ones are deleted."""

    tls_cert: Path | None = field(default=None, metadata=_help(
        "PEM certificate (chain) to serve TLS with and to present to nodes and the cloud"))
    """The coordinator's certificate: its gRPC server (OIP front, Fleet, Jobs) speaks TLS
    with it, and its clients of nodes and of the cloud tier present it. Replaced files are
    served from the next connection on, without a restart."""

    tls_key: Path | None = field(default=None, metadata=_help("PEM private key of --tls-cert"))
    """The private key of ``tls_cert`` (unencrypted PEM; keep it 0600)."""

    tls_ca: Path | None = field(default=None, metadata=_help(
        "PEM CA bundle: clients and nodes must present a certificate it signed (mTLS); "
        "nodes and the cloud tier are verified against it"))
    """With it the server requires client certificates signed by this CA (mutual TLS),
    and the coordinator verifies nodes and the cloud tier against it; without it, but
    with ``tls_cert``, it dials them with TLS against the system's roots."""

    auth_tokens: Path | None = field(default=None, metadata=_help(
        "TOML file of bearer tokens and their roles (infer, jobs, admin, node); every call "
        "but health then needs one (`edge-coordinator tokens add` writes it)"))
    """Bearer tokens (by SHA-256) with roles, checked on the OIP front, Fleet and Jobs:
    missing or unknown -> UNAUTHENTICATED, too weak -> PERMISSION_DENIED. ``node`` tokens
    are join tokens: with any, a node registers only with its own. Re-read on change.
    See ``edgeshard.auth`` for the format."""

    insecure: bool = field(default=False,
                           metadata=_help("allow plaintext gRPC on a non-loopback --host"))
    """Without TLS a coordinator bound to anything but loopback refuses to start unless
    this is set."""

    ready_file: Path | None = field(default=None, metadata=_help("write ports JSON when ready"))
    """When set, a JSON file with the bound ports is written once serving."""

    log_level: str = field(default="INFO", metadata=_help("DEBUG, INFO, WARNING, ERROR"))
    """Logging level of the process."""

    @property
    def tls_files(self) -> TLSFiles:
        """The TLS files: the server's certificate and CA, also used to dial nodes and the
        cloud tier."""
        return TLSFiles(self.tls_cert, self.tls_key, self.tls_ca)

    def cascade_rules(self) -> dict[str, CascadeRule]:
        """Edge model -> (cloud model, escalation policy)."""
        return parse_cascade(self.cascade, self.escalation)

    def audit_rates(self) -> dict[str, float]:
        """Edge model -> share of its confident items audited at the cloud tier."""
        return parse_audit(self.audit, set(self.cascade_rules()))

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        if self.ready_file is not None:
            object.__setattr__(self, "ready_file", Path(self.ready_file))
        for name in ("tls_cert", "tls_key", "tls_ca", "auth_tokens"):
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value) if value else None)
        check_server_settings(self.host, self.tls_files, self.insecure)
        check_port("port", self.port)
        for name in ("metrics_port", "http_port"):
            if getattr(self, name) is not None:
                check_port(name, getattr(self, name))
        for address in self.node:
            host, _, port = address.rpartition(":")
            check(bool(host) and port.isdigit(), "node",
                  f"{address!r} is not HOST:PORT (e.g. 127.0.0.1:8001)")
        if self.state_url is not None:
            scheme = self.state_url.partition("://")[0] if "://" in self.state_url else ""
            check(scheme in ("postgresql", "postgres"), "state_url",  # the value may hold a
                  f"not a PostgreSQL URL (scheme {scheme!r}); give "  # password: not echoed
                  "postgresql://USER@HOST:PORT/DB")
            try:  # (several hosts, host1:port1,host2:port2, are PostgreSQL's: left alone)
                urlsplit(self.state_url)
                parsed = True
            except ValueError:  # brackets of an IPv6 host that do not match
                parsed = False
            check(parsed, "state_url", "not a valid URL; give postgresql://USER@HOST:PORT/DB "
                  "and percent-encode characters such as [ ] / : @ in the user name or "
                  "password (%5B %5D %2F %3A %40)")
        check(self.replica_timeout_s >= 2.0, "replica_timeout_s",
              f"must be >= 2 (replicas heartbeat every second), got {self.replica_timeout_s}")
        for name in ("heartbeat_interval_s", "probe_interval_s", "probe_timeout_s",
                     "suspect_after_s", "dead_after_s", "request_timeout_s",
                     "shard_deadline_s", "lease_s", "rollout_interval_s"):
            check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        check(self.dead_after_s >= self.suspect_after_s, "dead_after_s",
              "must be >= suspect_after_s")
        check(self.expire_after_s >= self.dead_after_s, "expire_after_s",
              f"must be >= dead_after_s ({self.dead_after_s}), got {self.expire_after_s}")
        check(self.grace_seconds >= 0, "grace_seconds", "must be >= 0")
        check(self.max_in_flight >= 1, "max_in_flight", "must be >= 1")
        check(1 <= self.max_streams <= 1024, "max_streams", "must be in 1..1024")
        check(1 <= self.connections_per_process <= 64, "connections_per_process",
              f"must be in 1..64, got {self.connections_per_process}")
        check(1 <= self.max_followers <= 100_000, "max_followers", "must be in 1..100000")
        check(0 <= self.max_queued <= 1024, "max_queued", "must be in 0..1024")
        check(1 <= self.shadow_concurrency <= 256, "shadow_concurrency", "must be in 1..256")
        check(0 < self.epsilon <= 10, "epsilon", f"must be in (0, 10], got {self.epsilon}")
        check(1 <= self.shard_size <= 4096, "shard_size", "must be in 1..4096")
        check(self.shards_per_node >= 1, "shards_per_node", "must be >= 1")
        check(self.max_message_bytes >= 1024 * 1024, "max_message_bytes", "must be >= 1048576 "
              "(1 MiB)")
        if self.cloud is not None:
            host, _, port = self.cloud.rpartition(":")
            check(bool(host) and port.isdigit(), "cloud",
                  f"{self.cloud!r} is not HOST:PORT (e.g. 127.0.0.1:9001)")
        check(bool(self.cascade) <= (self.cloud is not None), "cascade",
              "needs --cloud HOST:PORT (where escalated items go)")
        check(self.cloud_output in ("probabilities", "label"), "cloud_output",
              f"must be 'probabilities' or 'label', got {self.cloud_output!r}")
        for name in ("cloud_timeout_s", "breaker_reset_s", "spool_ttl_s"):
            check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        for name in ("cloud_max_batch", "cloud_concurrency", "breaker_failures",
                     "spool_max_items", "spool_max_bytes"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.cloud_budget_per_s is None or self.cloud_budget_per_s > 0,
              "cloud_budget_per_s", "must be > 0 (unset it for no budget)")
        check(self.cloud_cost_per_call >= 0 and self.cloud_cost_per_item >= 0,
              "cloud_cost_per_call", "costs must be >= 0")
        self.cascade_rules()  # validates the cascade and escalation entries
        check(0 < self.drift_psi_warn <= 100, "drift_psi_warn",
              f"--drift-psi-warn must be in (0, 100] (0.1 moderate, 0.25 significant), "
              f"got {self.drift_psi_warn}")
        check(0 < self.drift_ks_warn <= 1, "drift_ks_warn",
              f"--drift-ks-warn must be in (0, 1], got {self.drift_ks_warn}")
        check(1 <= self.drift_min_items <= 10_000_000, "drift_min_items",
              f"--drift-min-items must be in 1..10000000, got {self.drift_min_items}")
        self.audit_rates()
        for name in ("audit_queue", "agreement_window", "agreement_min_items", "examples_keep"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.agreement_min_items <= self.agreement_window, "agreement_min_items",
              f"must be <= agreement_window ({self.agreement_window}), got "
              f"{self.agreement_min_items}")
        check(0.0 <= self.agreement_warn <= 1.0, "agreement_warn",
              f"must be a fraction from 0 to 1, got {self.agreement_warn}")
        check(self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "log_level",
              f"must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")


def build(flags: Mapping[str, Any], env: Mapping[str, str],
          config_file: Path | None = None) -> CoordinatorConfig:
    """Merge sources with precedence flags > environment > file > defaults."""
    return settings.build(CoordinatorConfig, flags, env, config_file, section="coordinator")
