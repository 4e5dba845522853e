"""Edge node process lifecycle: load -> warm up -> serve -> drain on SIGTERM.

Health (grpc.health.v1) is SERVING only after every loadable model is loaded and each
worker's interpreters ran a warm-up batch; on ``stop()`` it turns NOT_SERVING first,
then in-flight requests get ``grace_seconds`` to finish.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import ext
from edge_node.clients import CoordinatorLink, LoadReport, close_links
from edge_node.config import NodeConfig
from edge_node.control import ControlLog, RepositoryControl
from edge_node.drift import merge_windows, read_windows, write_windows
from edge_node.engine import InferenceEngine
from edge_node.errors import ModelLoadError
from edge_node.hotswap import ModelManager
from edge_node.metrics import NodeMetrics
from edge_node.repository import ModelRepository
from edge_node.runtime import RUNTIME
from edge_node.servicer import NodeServicer
from edge_node.supervisor import ProcessRole
from edgeshard import VERSION
from edgeshard.keys import load_trust_keys
from edgeshard.signing import SigningPolicy, TrustStore
from edgeshard.tls import channel_credentials, describe, server_credentials
from edgeshard.transport import add_port, create_server, message_options
from protos.discovery import NodeAdvert
from protos.oip_service import SERVICE_NAME, add_inference_servicer_to_server
from protos.reflection import enable_reflection

log = logging.getLogger(__name__)


class EdgeNodeServer:
    """A running edge node; ``start()`` returns once it is SERVING."""

    def __init__(self, config: NodeConfig, role: ProcessRole | None = None):
        self.config = config
        # one of several serving processes of a node (edge_node.supervisor), or the only one
        self.role = role or ProcessRole()
        self.metrics = NodeMetrics()
        self.repository = ModelRepository(config.model_repository,
                                          on_refused=self.metrics.version_refused,
                                          delegate=config.delegate_spec)
        self.engine: InferenceEngine | None = None
        self.models: ModelManager | None = None
        self.control: RepositoryControl | None = None
        self.servicer: NodeServicer | None = None
        self.health = health.HealthServicer()
        self.port = 0
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self.node_id = ""
        self._server: grpc.Server | None = None
        self._stream_pool: futures.ThreadPoolExecutor | None = None
        self._http = None  # the REST binding (an OipHttpServer), with --http-port
        self._links: list[CoordinatorLink] = []  # one per --coordinator
        self._advertiser = None  # Advertiser when --advertise is set
        self._link_credentials = None  # TLS to coordinators, when configured
        self._stopped = threading.Event()
        self._served = False  # reached SERVING (a failed start never does)

    def start(self) -> None:
        """Load the models, bind the port, warm every worker up, then turn SERVING and announce.

        Raises ``ModelLoadError`` when no model loads, ``OSError`` when the port cannot be
        bound, ``TLSError`` or ``KeyFileError`` (naming the flag and file) when a TLS file
        or a trusted key is unusable.
        """
        cfg = self.config
        # TLS files and keys first: a wrong path fails at once, not after the models load.
        server_tls = server_credentials(cfg.tls_files)
        self._link_credentials = channel_credentials(cfg.tls_files)  # None: plaintext
        self.repository.policy = SigningPolicy(TrustStore.of(load_trust_keys(cfg.trust_key)),
                                               cfg.require_signed)
        log.info("edge node starting: runtime %s, ext kernels %s; %s", RUNTIME,
                 f"{ext.IMPLEMENTATION} ({ext.SIMD})", self.repository.policy.describe())
        self.repository.load()
        if not self.repository.ready_versions():
            problems = "; ".join(
                f"{name}: {'; '.join(e.failures.values())}"
                for name, e in self.repository.models.items()
            ) or "the directory holds no model"
            raise ModelLoadError(
                f"no model could be loaded from {cfg.model_repository}: {problems}"
            )
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        # Each open ModelStreamInfer stream holds a handler thread: they get their own.
        options = message_options(cfg.max_message_bytes)
        if self.role.shares_port and cfg.max_connection_age_s:
            # GOAWAY after a while: reconnecting clients are spread over the processes anew
            options.append(("grpc.max_connection_age_ms", int(cfg.max_connection_age_s * 1000)))
        self._server = create_server(
            max(8, 2 * cfg.workers + 4) + cfg.max_infer_streams, "edge-grpc", options,
            maximum_concurrent_rpcs=cfg.max_queue_size + 4 * cfg.workers + cfg.max_infer_streams,
            reuse_port=self.role.shares_port)
        self._stream_pool = futures.ThreadPoolExecutor(
            max(8, 4 * cfg.workers), thread_name_prefix="edge-stream")
        # A serving process joining a port its siblings serve binds it once warm: before,
        # the kernel would hand it connections it could only answer UNAVAILABLE.
        join_warm = self.role.shares_port and cfg.port != 0
        self.port = cfg.port if join_warm else add_port(self._server, f"{cfg.host}:{cfg.port}",
                                                         server_tls)
        self.node_id = cfg.resolved_node_id(self.port)
        self.engine = InferenceEngine(cfg, self.repository, self.metrics)
        self.models = ModelManager(self.repository, self.engine, cfg.keep_versions)
        control_log = (ControlLog(Path(self.role.control_dir), self.role.index, self.role.count)
                       if self.role.control_dir else None)
        self.control = RepositoryControl(self.models, control_log)
        self.servicer = NodeServicer(self.engine, self.node_id, self.models,
                                     self._stream_pool, cfg.max_infer_streams,
                                     control=self.control)
        add_inference_servicer_to_server(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        enable_reflection(self._server)
        if not join_warm:
            self._server.start()  # answers live/health (NOT_SERVING) while warming up
        self.engine.start()
        self.models.start(cfg.model_poll_s)
        self.control.start()  # a restarted serving process applies its siblings' loads
        if join_warm:
            self.servicer.ready.set()
            self._set_health(health_pb2.HealthCheckResponse.SERVING)
            add_port(self._server, f"{cfg.host}:{cfg.port}", server_tls)
            self._server.start()
        if cfg.http_port is not None:
            self._start_http()
        if cfg.metrics_port is not None and not self.role.shares_port:  # else: the supervisor
            self.metrics_port = self.metrics.serve(cfg.metrics_host or cfg.host, cfg.metrics_port)
        self.servicer.ready.set()
        self._served = True
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("edge node %s serving %d model version(s) on %s:%d (%s)",
                 self.node_id, len(self.engine.versions), cfg.host, self.port,
                 describe(cfg.tls_files))
        self._announce()
        if cfg.ready_file:
            self._write_ready_file()

    def _start_http(self) -> None:
        """Serve the REST binding over the gRPC servicer, on the gRPC server's host, TLS
        files and message limit, with as many handler threads and requests in flight."""
        cfg = self.config
        from edgeshard.oip_http import OipHttpServer  # aiohttp (~10 MB) only when asked for

        self._http = OipHttpServer(
            self.servicer, "node", max_body=cfg.max_message_bytes,
            workers=max(8, 2 * cfg.workers + 4),
            max_in_flight=cfg.max_queue_size + 4 * cfg.workers, tls=cfg.tls_files,
            name="edge-http")
        self.http_port = self._http.start(cfg.host, cfg.http_port, self.role.shares_port)
        log.info("Open Inference Protocol HTTP/REST on %s://%s:%d", self._http.scheme,
                 cfg.host, self.http_port)

    def models_served(self) -> dict[str, list[str]]:
        """Sorted version names of each model with at least one loaded version."""
        # list() copies: a hot swap may change these dicts from another thread.
        served = ((name, list(e.versions)) for name, e in list(self.repository.models.items()))
        return {name: sorted(versions, key=int) for name, versions in served if versions}

    def load_report(self) -> LoadReport:
        """The node's current load, for heartbeats to the coordinator."""
        return LoadReport(queue_depth=self.engine.batcher.depth,
                          in_flight=self.engine.in_flight,
                          ewma_latency_ms=self.engine.latency_ewma_ms,
                          capacity=self.config.capacity)

    def drift_report(self):
        """The reference profiles of the loaded versions and the drift windows, for
        heartbeats (``edge_node.drift``): with several serving processes, the sum of
        every process's windows."""
        refs, windows = self.engine.drift.snapshot(list(self.engine.versions.values()))
        if self.role.drift_dir:
            windows = merge_windows(
                windows + read_windows(Path(self.role.drift_dir), self.role.index))
        return refs, windows

    def _share_drift(self) -> None:
        """A serving process that does not heartbeat publishes its drift windows every
        second for the one that does."""
        directory = Path(self.role.drift_dir)
        while not self._stopped.wait(1.0):
            try:
                _, windows = self.engine.drift.snapshot(list(self.engine.versions.values()))
                write_windows(directory, self.role.index, windows)
            except OSError as exc:
                log.warning("cannot share drift windows in %s: %s", directory, exc)

    def _host_towards(self, coordinator: str) -> str:
        """The host a coordinator should dial us at: ``advertise_address`` or a specific
        ``host``; for a wildcard bind, the local address of the route to the coordinator
        (a UDP socket's, connected without sending), so a node on ``0.0.0.0`` never
        registers as 127.0.0.1 with a coordinator elsewhere."""
        cfg = self.config
        if cfg.advertise_address or not cfg.wildcard_host:
            return cfg.public_host
        host = coordinator.rpartition(":")[0].strip("[]")
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((host, 9))
                local = probe.getsockname()[0]
        except OSError as exc:
            log.warning("cannot tell which address coordinator %s reaches this node at (%s); "
                        "registering as %s: set --advertise-address", coordinator, exc,
                        cfg.public_host)
            return cfg.public_host
        log.info("bound to %s: registering with %s as %s (--advertise-address chooses)",
                 cfg.host, coordinator, local)
        return f"[{local}]" if ":" in local else local

    def _announce(self) -> None:
        """Join each coordinator and/or advertise by zeroconf, as configured (one serving
        process per node does)."""
        cfg = self.config
        if not self.role.announces:
            if self.role.drift_dir:
                threading.Thread(target=self._share_drift, name="drift-share",
                                 daemon=True).start()
            return
        for coordinator in cfg.coordinator:
            address = f"{self._host_towards(coordinator)}:{self.port}"
            link = CoordinatorLink(coordinator, self.node_id, address, self.models_served,
                                   self.load_report, software_version=VERSION,
                                   credentials=self._link_credentials,
                                   join_token=cfg.join_token, processes=self.role.count,
                                   drift=self.drift_report)
            self._links.append(link)
            link.start()
        if cfg.advertise:
            from edge_node.advertise import Advertiser  # zeroconf only when asked for

            advert = NodeAdvert(node_id=self.node_id, port=self.port,
                                models=self.models_served(), capacity=cfg.capacity,
                                addresses=(cfg.public_host,))
            self._advertiser = Advertiser(advert, interfaces=list(cfg.mdns_interface) or None,
                                          host_address=cfg.public_host)
            self._advertiser.start()

    def _set_health(self, status) -> None:
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    def _write_ready_file(self) -> None:
        path = self.config.ready_file
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({
            "grpc_port": self.port, "http_port": self.http_port,
            "metrics_port": self.metrics_port,
            "pid": os.getpid(), "node_id": self.node_id,
        }))
        os.replace(tmp, path)  # readers never see a half-written file

    def stop(self, grace: float | None = None) -> bool:
        """Drain: NOT_SERVING, refuse new RPCs, let in-flight ones finish within grace."""
        if self._stopped.is_set():
            return True
        grace = self.config.grace_seconds if grace is None else grace
        if self.servicer is not None:
            self.servicer.ready.clear()
        log.info("draining (grace %.1fs)", grace)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._advertiser is not None:
            self._advertiser.close()
        close_links(self._links)
        if self.control is not None:
            self.control.close()
        if self.models is not None:
            self.models.close()
        drained = True
        http = self._http.stop(grace) if self._http is not None else None
        if self._server is not None:
            self._server.stop(grace).wait()
        if http is not None:
            http.wait()
        if self.engine is not None:
            drained = self.engine.stop(grace)
        if self._stream_pool is not None:
            self._stream_pool.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()
        self._stopped.set()
        if not self._served:
            log.info("edge node stopped (it never started serving)")
        else:
            log.info("edge node stopped%s", "" if drained else " (some work was cut off)")
        return drained

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: forever) for ``stop()``; True once stopped."""
        return self._stopped.wait(timeout)
