"""``edgeshard.v1.Fleet``: registration, heartbeats and the admin view of the fleet."""

from __future__ import annotations

import logging
import time

from coordinator.errors import InvalidRequestError
from coordinator.membership import Membership
from coordinator.registry import NodeRecord, Registry
from coordinator.servicer import guard
from protos import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)


def _models(pb) -> dict[str, tuple[str, ...]]:
    return {m.name: tuple(m.versions) for m in pb}


def node_info(rec: NodeRecord, now: float) -> fleet_pb2.NodeInfo:
    return fleet_pb2.NodeInfo(
        node_id=rec.node_id, address=rec.address, state=rec.display_state, source=rec.source,
        models=[fleet_pb2.ModelVersions(name=n, versions=v) for n, v in sorted(rec.models.items())],
        load=fleet_pb2.NodeLoad(queue_depth=rec.queue_depth, in_flight=rec.in_flight,
                                ewma_latency_ms=rec.latency_ms or rec.node_latency_ms,
                                capacity=rec.capacity),
        weight=rec.weight,
        last_seen_s_ago=(now - rec.last_heard) if rec.last_heard else -1.0,
        epoch=rec.epoch, shards_done=rec.shards_done, items_done=rec.items_done,
        outstanding=rec.outstanding,
    )


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    def __init__(self, registry: Registry, membership: Membership, heartbeat_interval: float):
        self.registry = registry
        self.membership = membership
        self.heartbeat_interval = heartbeat_interval

    @guard
    def Register(self, request, context):
        if not request.node_id or not request.address:
            raise InvalidRequestError("node_id and address: both are required to register")
        epoch = self.registry.register(request.node_id, request.address,
                                       _models(request.models), request.capacity)
        admitted = self.membership.probe_now(request.address)  # admission = a health check
        log.info("node %s registered from %s (epoch %d, %s)", request.node_id, request.address,
                 epoch, "admitted" if admitted else "not yet healthy")
        return fleet_pb2.RegisterResponse(epoch=epoch,
                                          heartbeat_interval_s=self.heartbeat_interval)

    @guard
    def Heartbeat(self, request, context):
        load = request.load
        known, drained = self.registry.heartbeat(
            request.node_id, request.epoch, load.queue_depth, load.in_flight,
            load.ewma_latency_ms, load.capacity, _models(request.models) or None)
        return fleet_pb2.HeartbeatResponse(reregister=not known, draining=drained)

    @guard
    def ListNodes(self, request, context):
        now = time.monotonic()
        return fleet_pb2.ListNodesResponse(
            nodes=[node_info(r, now) for r in self.registry.snapshot()])

    @guard
    def Drain(self, request, context):
        rec = self.registry.set_drained(request.node_id, True)
        log.info("node %s drained by an operator", rec.node_id)
        return node_info(rec, time.monotonic())

    @guard
    def Undrain(self, request, context):
        rec = self.registry.set_drained(request.node_id, False)
        log.info("node %s undrained by an operator", rec.node_id)
        return node_info(rec, time.monotonic())
