"""The edge node's client of its coordinators: register, then heartbeat with load.

One ``CoordinatorLink`` per coordinator, each in its own daemon thread, so a coordinator
that is down or slow delays no other's heartbeats. Registration is retried with capped
exponential backoff until the coordinator answers; a heartbeat answered ``reregister``
(the coordinator restarted or forgot us) starts over. The node serves regardless: losing
a coordinator never stops local inference.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from edge_node.drift import Reference, WindowSnapshot
from edgeshard.tls import handshake_hint
from edgeshard.transport import open_channel
from protos import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

RPC_TIMEOUT_S = 3.0
# Registration refused for the node's identity or request: the details say what to fix.
REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                     grpc.StatusCode.INVALID_ARGUMENT})
MAX_BACKOFF_S = 5.0


@dataclass(frozen=True)
class LoadReport:
    """The node's load for heartbeats: queue depth, in flight, latency EWMA (ms), capacity."""

    queue_depth: int
    in_flight: int
    ewma_latency_ms: float
    capacity: int


class CoordinatorLink:
    """Keeps this node registered with the coordinator at ``address``; with
    ``credentials`` over TLS (the node's own certificate as its client certificate), with
    ``join_token`` proving its id on every call; ``processes`` serving processes answer
    at ``node_address`` (the coordinator opens connections enough to reach them all)."""

    def __init__(self, address: str, node_id: str, node_address: str,
                 models: Callable[[], dict[str, list[str]]], load: Callable[[], LoadReport],
                 software_version: str = "",
                 credentials: grpc.ChannelCredentials | None = None,
                 join_token: str | None = None, processes: int = 1,
                 drift: Callable[[], tuple[list[Reference], list[WindowSnapshot]]]
                 | None = None):
        self.address = address
        self._drift = drift  # the drift references and windows for heartbeats
        self.node_id = node_id
        self.node_address = node_address
        self.processes = processes
        self._models = models
        self._load = load
        self._software_version = software_version
        self._sent_models: list = []  # the models last reported to the coordinator
        self._stop = threading.Event()
        # The first reconnection sooner than gRPC's 1 s; later ones within 2 s (the
        # transport's default). credentials None: plaintext.
        self._channel = open_channel(address, options=[("grpc.initial_reconnect_backoff_ms", 500)],
                                     credentials=credentials, token=join_token)
        self._tls = credentials is not None
        self._stub = fleet_pb2_grpc.FleetStub(self._channel)
        self._thread = threading.Thread(target=self._run, name="coordinator-link", daemon=True)
        self.epoch = 0
        self.registered = threading.Event()
        self.drained = False

    def start(self) -> None:
        """Start the registration and heartbeat thread."""
        self._thread.start()

    def stop(self) -> None:
        """Tell the thread to end (it sends nothing more); ``close`` waits for it."""
        self._stop.set()

    def close(self) -> None:
        """Stop the thread (waits up to ``RPC_TIMEOUT_S + 1`` seconds) and close the channel."""
        self.stop()
        self._thread.join(RPC_TIMEOUT_S + 1)
        self._channel.close()

    def _models_pb(self) -> list[fleet_pb2.ModelVersions]:
        return [fleet_pb2.ModelVersions(name=n, versions=v)
                for n, v in sorted(self._models().items())]

    def _register(self) -> float:
        self._sent_models = self._models_pb()
        response = self._stub.Register(fleet_pb2.RegisterRequest(
            node_id=self.node_id, address=self.node_address, models=self._sent_models,
            capacity=self._load().capacity, software_version=self._software_version,
            processes=self.processes,
        ), timeout=RPC_TIMEOUT_S)
        self.epoch = response.epoch
        self.registered.set()
        log.info("registered with coordinator %s (epoch %d)", self.address, self.epoch)
        return max(0.05, response.heartbeat_interval_s or 1.0)

    def _beat(self) -> bool:
        load = self._load()
        models = self._models_pb()
        changed = models != self._sent_models  # versions swapped since the last report
        references, windows = self._drift() if self._drift is not None else ([], [])
        response = self._stub.Heartbeat(fleet_pb2.HeartbeatRequest(
            node_id=self.node_id, epoch=self.epoch,
            load=fleet_pb2.NodeLoad(queue_depth=load.queue_depth, in_flight=load.in_flight,
                                    ewma_latency_ms=load.ewma_latency_ms,
                                    capacity=load.capacity),
            models=models if changed else None,
            drift_references=[_reference_pb(r) for r in references],
            drift_windows=[_window_pb(w) for w in windows],
        ), timeout=RPC_TIMEOUT_S)
        self._sent_models = models
        if response.draining != self.drained:
            self.drained = response.draining
            log.info("coordinator %s %s this node", self.address,
                     "drained" if self.drained else "undrained")
        return not response.reregister

    def _run(self) -> None:
        backoff = 0.2
        interval = None
        while not self._stop.is_set():
            try:
                if interval is None:
                    interval = self._register()
                    backoff = 0.2
                elif not self._beat():
                    log.info("coordinator %s asked this node to register again",
                             self.address)
                    self.registered.clear()
                    interval = None
                    continue
                self._stop.wait(interval)
            except grpc.RpcError as exc:
                if interval is None:
                    why = exc.code().name
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:  # a TLS mismatch shows so
                        why = handshake_hint(exc.details() or "", self._tls) or why
                    elif exc.code() in REFUSED:  # the coordinator says why: pass it on
                        why = f"{why}: {exc.details()}"
                    log.warning("cannot register with coordinator %s: %s; retrying in %.1fs",
                                self.address, why, backoff)
                else:
                    log.warning("heartbeat to %s failed: %s", self.address, exc.code().name)
                    interval = None  # re-register once it answers again
                self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)


def _reference_pb(ref: Reference) -> fleet_pb2.DriftReference:
    """A version's reference profile as a heartbeat carries it (no stats: no profile)."""
    msg = fleet_pb2.DriftReference(model=ref.model, version=ref.version)
    p = ref.profile
    if p is not None:
        inp = p.input
        stats = msg.reference
        stats.items = p.items
        stats.count.extend(inp.count)
        stats.total.extend(c * m for c, m in zip(inp.count, inp.mean, strict=True))
        stats.total_sq.extend(c * (s * s + m * m)
                              for c, m, s in zip(inp.count, inp.mean, inp.std, strict=True))
        stats.input_lo, stats.input_hi = inp.histogram.lo, inp.histogram.hi
        stats.input_histogram.extend(inp.histogram.counts)
        if p.confidence is not None:
            stats.confidence_lo, stats.confidence_hi = p.confidence.lo, p.confidence.hi
            stats.confidence_histogram.extend(p.confidence.counts)
    return msg


def _window_pb(w: WindowSnapshot) -> fleet_pb2.DriftWindow:
    """A drift window as a heartbeat carries it (the bins are the reference's)."""
    return fleet_pb2.DriftWindow(model=w.model, version=w.version, segment=w.segment,
                                 window=fleet_pb2.DriftStats(
                                     items=w.items, count=w.count, total=w.total,
                                     total_sq=w.total_sq, input_histogram=w.histogram,
                                     confidence_histogram=w.confidence or ()))


def close_links(links: list[CoordinatorLink]) -> None:
    """Close every link: all are told to stop first, so that one waiting on an RPC to a
    coordinator that does not answer holds up no other."""
    for link in links:
        link.stop()
    for link in links:
        link.close()
