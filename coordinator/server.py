"""Coordinator process lifecycle: state -> membership -> dispatch -> serve -> drain.

Start-up re-opens the job store (SQLite under ``--state-dir``, or the PostgreSQL database
of ``--state-url`` shared with other replicas) and re-queues the shards a previous process
had leased, so a coordinator killed with SIGKILL resumes its jobs (on PostgreSQL the
surviving replicas re-queue a dead one's leases within ``--replica-timeout-s``).
Health is SERVING once the gRPC server runs; SIGTERM turns it NOT_SERVING, refuses new
RPCs and gives in-flight ones ``grace_seconds``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading

from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.api.access import required_role
from coordinator.api.aio_clients import AioNodeChannels
from coordinator.api.canary import CanaryFront, Shadow
from coordinator.api.clients import (
    ClientPool,
    check_cloud,
    cloud_transport,
    facts_asker,
    item_trier,
    node_classifier,
    node_tensors,
)
from coordinator.api.examples_servicer import ExamplesServicer
from coordinator.api.fleet_servicer import FleetServicer
from coordinator.api.inference_servicer import InferenceServicer
from coordinator.api.jobs_servicer import JobsServicer
from coordinator.api.rollouts_servicer import RolloutsServicer
from coordinator.cascade.audit import Auditor, AuditSampler
from coordinator.cascade.breaker import CircuitBreaker
from coordinator.cascade.budget import CostMeter, TokenBucket
from coordinator.cascade.cloud import CloudTier, CloudTierStatus
from coordinator.cascade.decision import Cascade
from coordinator.cascade.watch import AgreementWatch
from coordinator.config import CoordinatorConfig
from coordinator.dataplane import DataPlane
from coordinator.fleet.admission import own_addresses
from coordinator.fleet.catalog import ModelCatalog
from coordinator.fleet.forwarder import Forwarder
from coordinator.fleet.membership import Membership
from coordinator.fleet.registry import Registry
from coordinator.fleet.router import Router
from coordinator.jobs.dispatcher import Dispatcher
from coordinator.jobs.drains import DrainBook
from coordinator.jobs.examples import ExampleBook, ExampleWriter
from coordinator.jobs.members import MemberBook
from coordinator.jobs.replayer import SpoolReplayer
from coordinator.jobs.rollouts import RolloutBook
from coordinator.jobs.runner import ShardRunner
from coordinator.jobs.service import MESSAGE_HEADROOM, JobService
from coordinator.jobs.signals import JobSignals
from coordinator.jobs.spool import SpoolLimits
from coordinator.jobs.spool_queue import SpoolQueue
from coordinator.jobs.store import JobStore
from coordinator.metrics import CoordinatorMetrics, GaugeLoop
from coordinator.monitoring.agreement import AgreementTracker
from coordinator.monitoring.drift import Thresholds
from coordinator.monitoring.drift_watch import DriftWatch
from coordinator.monitoring.segments import SegmentLabels
from coordinator.rollout.controller import Rollouts
from edgeshard.aio_server import AioServer
from edgeshard.auth import NODE, Authenticator, AuthInterceptor, TokenBook
from edgeshard.oip_http import OipHttpServer
from edgeshard.tls import channel_credentials, describe, server_credentials
from edgeshard.transport import message_options
from protos import examples_pb2, examples_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from protos.oip_service import SERVICE_NAME, add_inference_servicer_to_server
from protos.reflection import enable_reflection

log = logging.getLogger(__name__)

FLEET_SERVICES = ("edgeshard.v1.Fleet", "edgeshard.v1.Jobs", "edgeshard.v1.Rollouts",
                  "edgeshard.v1.Examples")


class CoordinatorServer:
    """One coordinator process: builds the domain objects, serves the gRPC API, drains.

    Construction raises ``TLSError`` when a TLS file is unusable and ``TokenFileError``
    when the token file is (both ``SettingsError``: the message names the flag and the
    file). ``start`` raises ``OSError`` (port or state dir unavailable),
    ``sqlite3.DatabaseError`` (a corrupt store) or ``CoordinatorError``; ``stop(grace)``
    drains for ``grace`` seconds (the config's ``grace_seconds`` by default).
    """

    def __init__(self, config: CoordinatorConfig):
        self.config = config
        self.metrics = CoordinatorMetrics()
        self.registry = Registry(config.suspect_after_s, config.dead_after_s,
                                 expire_after=config.expire_after_s)
        # TLS files are read here, before anything starts: a wrong path fails at once.
        self._server_tls = server_credentials(config.tls_files)
        self._client_tls = channel_credentials(config.tls_files)
        self.clients = ClientPool(config.max_message_bytes, self._client_tls,
                                  connections_per_process=config.connections_per_process)
        self.router = Router(self.registry, config.epsilon)
        self.forwarder = Forwarder(self.registry, self.router, config.max_in_flight,
                                   on_result=self.metrics.forwarded_result,
                                   max_queued=config.max_queued)
        self.catalog = ModelCatalog(self.registry, facts_asker(self.clients),
                                    item_trier(self.clients))
        self.authenticator = None
        if config.auth_tokens is not None:
            self.authenticator = Authenticator(TokenBook(config.auth_tokens), required_role,
                                               on_denied=self.metrics.denied)
        book = self.authenticator.book if self.authenticator else None
        self.membership = Membership(
            self.registry, lambda address, timeout: self.clients.get(address).probe(timeout),
            config.probe_interval_s, config.probe_timeout_s,
            certificates=config.tls_ca is not None and config.tls_cert is not None,
            join_tokens=(lambda: book.has_role(NODE)) if book else (lambda: False),
            verify=self.clients.probe_as)
        self.health = health.HealthServicer()
        self.stopping = threading.Event()
        self.store: JobStore | None = None
        self.spool: SpoolQueue | None = None
        self.dispatcher: Dispatcher | None = None
        self.front: InferenceServicer | None = None
        self.discovery = None
        self.port = 0
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self._server: AioServer | None = None
        self._http: OipHttpServer | None = None  # the REST binding, with --http-port
        self.signals = JobSignals()  # wakes the Watch/FetchResults streams of a job
        self._lock_file = None
        self.cascade: Cascade | None = None
        self.cloud: CloudTier | None = None
        self.cost: CostMeter | None = None
        self.replayer: SpoolReplayer | None = None
        self.rollouts: Rollouts | None = None
        self.shadow: Shadow | None = None
        # Drift windows from heartbeats, judged against each version's reference profile;
        # segment names become bounded metric label values.
        self.segments = SegmentLabels()
        self.drift = DriftWatch(
            Thresholds(config.drift_psi_warn, config.drift_ks_warn, config.drift_min_items),
            on_reading=lambda model, version, segment, reading: self.metrics.drift_reading(
                model, version, self.segments.label(model, segment), reading),
            on_unprofiled=self.metrics.drift_unprofiled_version,
            stale_s=max(30.0, 3 * config.dead_after_s))
        self.auditor: Auditor | None = None  # audit sampling, with --audit
        self.examples: ExampleWriter | None = None  # hard examples, with a cascade

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Open the state, start membership, jobs and the cascade, then serve."""
        cfg = self.config
        if cfg.state_url is not None:  # a store shared by replicas: no state dir to own
            self.store = JobStore(cfg.state_url)
        else:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
            self._lock_state_dir()
            self.store = JobStore(str(cfg.state_dir / "jobs.sqlite3"))
        drains = DrainBook(self.store.database)
        self.membership.record_drain, self.membership.recorded_drains = (drains.record,
                                                                          drains.drained)
        if self.store.database.shared:  # replicas: a node registered with one is everyone's
            self.membership.share_members = MemberBook(self.store.database).share
        book = RolloutBook(self.store.database)
        self.rollouts = Rollouts(book.load, book.save, cfg.rollout_interval_s,
                                 on_change=self.metrics.rollout_changed,
                                 on_request=self.metrics.rollout_request,
                                 on_decision=self.metrics.rollout_decided)
        self.rollouts.refresh()  # decisions of earlier runs hold from the first request
        for address in cfg.node:
            self.registry.add_candidate(address, "seed")
        self.cascade = self._build_cascade()
        self.spool = spool = SpoolQueue(self.store)
        self.dispatcher = Dispatcher(
            self.store, self.registry,
            ShardRunner(self.forwarder, node_classifier(self.clients), cfg.shard_deadline_s,
                        self.cascade, cfg.cloud_timeout_s, node_tensors(self.clients),
                        self.catalog.task, labels=self.rollouts),
            cfg.shards_per_node, cfg.lease_s, on_commit=self.metrics.committed,
            spool_limits=SpoolLimits(cfg.spool_max_items, cfg.spool_max_bytes, cfg.spool_ttl_s),
            replica_timeout_s=cfg.replica_timeout_s, on_job_change=self.signals.notify)
        if self.cascade is not None:
            self.replayer = SpoolReplayer(spool, self.cascade, cfg.cloud_timeout_s,
                                          on_change=self.dispatcher.notify)
        plane = DataPlane(self.forwarder, self.cascade, self.catalog.task)
        self.shadow = Shadow(cfg.shadow_concurrency, on_outcome=self.metrics.shadow_outcome)
        # the online front's own channels to the nodes, on the API server's event loop
        channels = AioNodeChannels(cfg.max_message_bytes, self._client_tls,
                                   cfg.connections_per_process)
        self.front = InferenceServicer(
            self.registry, plane, self.clients, cfg.request_timeout_s,
            CanaryFront(self.rollouts, plane, self.clients, self.shadow, cfg.request_timeout_s),
            on_segment=self._segment_result, channels=channels)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        # An asyncio server: Watch and FetchResults wait on its loop and hold no thread;
        # unary calls and Submit uploads (at most max_streams) run on 32 + max_streams
        # handler threads, so heartbeats always find one.
        interceptors = [AuthInterceptor(self.authenticator)] if self.authenticator else []
        self._server = AioServer(32 + cfg.max_streams, "coord-grpc",
                                 message_options(cfg.max_message_bytes), interceptors)
        jobs = JobService(self.store, self.catalog, cfg.shard_size, self.dispatcher.notify,
                          self.stopping, pending=spool.pending, signals=self.signals,
                          run_blocking=self._server.run_blocking,
                          max_shard_bytes=cfg.max_message_bytes - MESSAGE_HEADROOM,
                          cascaded=lambda model: (self.cascade is not None
                                                  and self.cascade.rule(model) is not None))
        self._server.at_stop(channels.close)
        self.port = self._server.add_port(f"{cfg.host}:{cfg.port}", self._server_tls)
        self.dispatcher.address = f"{cfg.host}:{self.port}"
        self.membership.own = own_addresses(cfg.host, self.port)
        add_inference_servicer_to_server(self.front, self._server)
        fleet_pb2_grpc.add_FleetServicer_to_server(
            FleetServicer(self.registry, self.membership, cfg.heartbeat_interval_s,
                          cloud=self.cloud_info, store_fault=lambda: self.store.fault,
                          authenticator=self.authenticator, on_denied=self.metrics.denied,
                          on_drift=self.drift.report),
            self._server)
        fleet_pb2_grpc.add_JobsServicer_to_server(
            JobsServicer(jobs, cfg.max_streams, self.authenticator, cfg.max_followers),
            self._server)
        fleet_pb2_grpc.add_RolloutsServicer_to_server(
            RolloutsServicer(self.rollouts, self.registry), self._server)
        examples_pb2_grpc.add_ExamplesServicer_to_server(ExamplesServicer(
            ExampleBook(self.store.database, cfg.examples_keep),
            lambda: {*self.registry.served_models(), *(self.cascade.rules if self.cascade
                                                       else ())}), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        enable_reflection(self._server, extra_service_names=FLEET_SERVICES,
                          extra_file_descriptors=(fleet_pb2.DESCRIPTOR, examples_pb2.DESCRIPTOR))
        self._server.start()
        if cfg.http_port is not None:
            self._start_http()
        if self.cloud is not None:
            self._check_cloud()
        self.membership.run_round()  # admit reachable seeds before taking work
        self.membership.start()
        self.dispatcher.start()
        self.rollouts.start()
        if self.replayer is not None:
            self.replayer.start()
        if cfg.discover:
            self._start_discovery()
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve(cfg.metrics_host or cfg.host, cfg.metrics_port)
            GaugeLoop(self.metrics, self.stopping, self.registry, self.dispatcher,
                      self.forwarder, self.store, self.signals, self.cloud, self.spool,
                      self.cost).start()
        self.front.ready.set()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("coordinator serving on %s:%d (%s%s; state %s, %d seed node(s))",
                 cfg.host, self.port, describe(cfg.tls_files),
                 ", bearer tokens" if self.authenticator else "", self.store.path,
                 len(cfg.node))
        policy = self.membership.admission
        if policy.open:
            if self.authenticator is not None:
                log.warning("nodes register without proof of identity: give the coordinator "
                            "--tls-ca (client certificates) or node join tokens (role node in "
                            "--auth-tokens)")
        else:
            proofs = [p for p, on in (("a client certificate whose common name is its id",
                                       policy.certificates),
                                      ("a join token named after its id", policy.join_tokens))
                      if on]
            log.info("nodes must prove who they are with %s", " and ".join(proofs))
        if cfg.ready_file:
            tmp = cfg.ready_file.with_name(cfg.ready_file.name + ".tmp")
            tmp.write_text(json.dumps({"grpc_port": self.port, "http_port": self.http_port,
                                       "metrics_port": self.metrics_port, "pid": os.getpid()}))
            os.replace(tmp, cfg.ready_file)

    def _start_http(self) -> None:
        """Serve the REST binding over the inference servicer, with the gRPC server's
        host, TLS files, bearer tokens and message limit."""
        cfg = self.config
        self._http = OipHttpServer(
            self.front, "coordinator", max_body=cfg.max_message_bytes, workers=32,
            max_in_flight=cfg.max_in_flight, authenticator=self.authenticator,
            tls=cfg.tls_files, name="coord-http")
        self.http_port = self._http.start(cfg.host, cfg.http_port)
        log.info("Open Inference Protocol HTTP/REST on %s://%s:%d", self._http.scheme,
                 cfg.host, self.http_port)

    def _build_cascade(self) -> Cascade | None:
        cfg = self.config
        rules = cfg.cascade_rules()
        if not rules:
            return None
        # Burst: one second's worth of the budget (at least one item).
        budget = TokenBucket(cfg.cloud_budget_per_s, max(1.0, cfg.cloud_budget_per_s or 1.0))
        self.cost = CostMeter(cfg.cloud_cost_per_call, cfg.cloud_cost_per_item)
        cloud = CloudTier(cloud_transport(self.clients, cfg.cloud, cfg.cloud_output),
                          CircuitBreaker(cfg.breaker_failures, cfg.breaker_reset_s),
                          budget, self.cost, cfg.cloud_concurrency, cfg.cloud_max_batch,
                          on_call=self.metrics.cloud_call)
        self.cloud = cloud
        for rule in rules.values():
            log.info("cascade: %s escalates to %s at %s when %s < %g", rule.model,
                     rule.cloud_model, cfg.cloud, rule.policy.name, rule.policy.threshold)
        return Cascade(rules, cloud, on_decision=self.metrics.decision, **self._audit(cloud))

    def _audit(self, cloud: CloudTier) -> dict:
        """Start the hard example writer and, with --audit, the auditor; the cascade's
        agreement arguments."""
        cfg = self.config
        self.examples = ExampleWriter(ExampleBook(self.store.database, cfg.examples_keep),
                                      on_outcome=self.metrics.hard_example)
        self.examples.start()
        watch = AgreementWatch(AgreementTracker(cfg.agreement_window, cfg.agreement_min_items,
                                                cfg.agreement_warn),
                               on_stat=self.metrics.agreement_stat, keep=self.examples.keep)
        rates = cfg.audit_rates()
        if any(rates.values()):
            self.auditor = Auditor(cloud, watch.compared, cfg.audit_queue, cfg.cloud_timeout_s,
                                   on_outcome=self.metrics.audit_outcome)
            self.auditor.start()
            log.info("audit sampling: %s", ", ".join(f"{m} {r:g}" for m, r in rates.items()))
        return {"on_compared": watch.compared, "auditor": self.auditor,
                "sampler": AuditSampler(rates)}

    def _check_cloud(self) -> None:
        """Say once, at start-up, whether the cloud tier answers and serves its models."""
        cfg = self.config
        models = sorted({rule.cloud_model for rule in self.cascade.rules.values()})
        error, missing = check_cloud(self.clients, cfg.cloud, models, cfg.probe_timeout_s)
        self.cloud.note_probe(error)
        if error is not None:
            log.warning("cloud tier %s is unreachable (%s); escalated items wait in the "
                        "spool (up to --spool-ttl-s %gs) until it answers", cfg.cloud, error,
                        cfg.spool_ttl_s)
        elif missing:
            log.warning("cloud tier %s does not report %s ready; their escalations wait in "
                        "the spool until it does", cfg.cloud, ", ".join(missing))
        else:
            log.info("cloud tier %s serves %s", cfg.cloud, ", ".join(models))

    def _segment_result(self, model: str, segment: str, outcome: str, items: int,
                        escalated: int) -> None:
        self.metrics.segment_result(model, self.segments.label(model, segment), outcome,
                                    items, escalated)

    def cloud_info(self) -> CloudTierStatus | None:
        """The cloud tier's state for ListNodes, or None without a cascade."""
        if self.cloud is None:
            return None
        items, _ = self.spool.totals()
        return CloudTierStatus(self.config.cloud, self.cloud.state, self.cloud.last_error,
                               items)

    def _lock_state_dir(self) -> None:
        """One coordinator per state dir: the store assumes a single writer."""
        self._lock_file = open(self.config.state_dir / "coordinator.lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise OSError(f"state_dir: {self.config.state_dir} is in use by another "
                          "coordinator; give each coordinator its own --state-dir") from None

    def _start_discovery(self) -> None:
        from coordinator.fleet.discovery import Discovery  # zeroconf only when asked for

        def found(advert) -> None:
            hosts = advert.addresses or ("127.0.0.1",)
            self.membership.discovered([f"{h}:{advert.port}" for h in hosts],
                                       advert.node_id, advert.capacity)

        self.discovery = Discovery(found, interfaces=list(self.config.mdns_interface) or None)
        self.discovery.start()

    def _set_health(self, status) -> None:
        for service in ("", SERVICE_NAME, *FLEET_SERVICES):
            self.health.set(service, status)

    def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new RPCs, give in-flight ones ``grace`` seconds,
        then close threads, channels and the store. Idempotent."""
        if self.stopping.is_set():
            return
        grace = self.config.grace_seconds if grace is None else grace
        log.info("draining (grace %.1fs)", grace)
        self.stopping.set()
        if self.front is not None:
            self.front.ready.clear()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.signals.notify_all()  # following streams look, see the stop and end
        if self.discovery is not None:
            self.discovery.close()
        http = self._http.stop(grace) if self._http is not None else None
        if self._server is not None:
            self._server.stop(grace).wait()
        if http is not None:
            http.wait()
        if self.dispatcher is not None:
            self.dispatcher.close(timeout=grace)
        if self.replayer is not None:
            self.replayer.close()
        if self.rollouts is not None:
            self.rollouts.close()
        if self.shadow is not None:
            self.shadow.close()
        if self.front is not None:
            self.front.close()
        if self.auditor is not None:
            self.auditor.close()
        if self.examples is not None:
            self.examples.close()
        self.membership.close()
        self.clients.close()
        self.metrics.close()
        if self.store is not None:
            self.store.close()
        if self._lock_file is not None:
            self._lock_file.close()
        log.info("coordinator stopped")
