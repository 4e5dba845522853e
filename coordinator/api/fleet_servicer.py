"""``edgeshard.v1.Fleet``: registration, heartbeats and the admin view of the fleet."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from coordinator.api import convert
from coordinator.cascade.cloud import CloudTierStatus
from coordinator.fleet.membership import Membership
from coordinator.fleet.registry import Registry
from edgeshard.rpc import guarded
from protos import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

guard = guarded("coordinator", log)


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    """Membership RPCs over ``Membership``; ``heartbeat_interval`` (seconds) is what
    registered nodes are told to use."""

    def __init__(self, registry: Registry, membership: Membership, heartbeat_interval: float,
                 cloud: Callable[[], CloudTierStatus | None] = lambda: None,
                 store_fault: Callable[[], str | None] = lambda: None):
        self.registry = registry
        self.membership = membership
        self.heartbeat_interval = heartbeat_interval
        self.cloud = cloud  # the cloud tier's status, for ListNodes
        self.store_fault = store_fault  # why the job store cannot write, if it cannot

    @guard
    def Register(self, request, context):
        epoch = self.membership.register(request.node_id, request.address,
                                         convert.models(request.models), request.capacity)
        return fleet_pb2.RegisterResponse(epoch=epoch,
                                          heartbeat_interval_s=self.heartbeat_interval)

    @guard
    def Heartbeat(self, request, context):
        load = request.load
        known, drained = self.registry.heartbeat(
            request.node_id, request.epoch, load.queue_depth, load.in_flight,
            load.ewma_latency_ms, load.capacity, convert.models(request.models) or None)
        return fleet_pb2.HeartbeatResponse(reregister=not known, draining=drained)

    @guard
    def ListNodes(self, request, context):
        now = time.monotonic()
        return fleet_pb2.ListNodesResponse(
            nodes=[convert.node_info(r, now) for r in self.registry.snapshot()],
            cloud=convert.cloud_info(self.cloud()), store_fault=self.store_fault() or "")

    @guard
    def Drain(self, request, context):
        return convert.node_info(self.membership.set_drained(request.node_id, True),
                                 time.monotonic())

    @guard
    def Undrain(self, request, context):
        return convert.node_info(self.membership.set_drained(request.node_id, False),
                                 time.monotonic())
