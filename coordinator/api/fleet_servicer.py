"""``edgeshard.v1.Fleet``: registration, heartbeats and the admin view of the fleet."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from coordinator.api import convert
from coordinator.cascade.cloud import CloudTierStatus
from coordinator.errors import (
    InvalidRequestError,
    NodeIdentityError,
    NodeUnauthenticatedError,
)
from coordinator.fleet.admission import MAX_ADDRESS_CHARS, Credentials, check_node_id
from coordinator.fleet.membership import Membership
from coordinator.fleet.registry import Registry
from coordinator.monitoring.drift_watch import NodeDrift
from edgeshard.auth import NODE, Authenticator, AuthError
from edgeshard.rpc import guarded
from protos import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

guard = guarded("coordinator", log)


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    """Membership RPCs over ``Membership``; ``heartbeat_interval`` (seconds) is what
    registered nodes are told to use. Register and Heartbeat must prove the node's
    identity as ``membership.admission`` requires (client certificate, join token from
    ``authenticator``)."""

    def __init__(self, registry: Registry, membership: Membership, heartbeat_interval: float,
                 cloud: Callable[[], CloudTierStatus | None] = lambda: None,
                 store_fault: Callable[[], str | None] = lambda: None,
                 authenticator: Authenticator | None = None,
                 on_denied: Callable[[str, str], None] = lambda method, code: None,
                 on_drift: Callable[[str, NodeDrift], None] | None = None):
        self.registry = registry
        self.on_drift = on_drift  # (node id, its drift report) of an accepted heartbeat
        self.authenticator = authenticator
        self.on_denied = on_denied  # (method, status name) of a refused node: metrics
        self.membership = membership
        self.heartbeat_interval = heartbeat_interval
        self.cloud = cloud  # the cloud tier's status, for ListNodes
        self.store_fault = store_fault  # why the job store cannot write, if it cannot

    def _prove(self, method: str, node_id: str, context) -> None:
        """Check that the caller of ``method`` is node ``node_id`` (a valid id, else
        ``InvalidRequestError``; ``NodeUnauthenticatedError`` / ``NodeIdentityError``
        when it cannot prove it); nothing more to check in an open fleet."""
        check_node_id(node_id)
        policy = self.membership.admission
        if policy.open:
            return
        names: tuple[str, ...] = ()
        if policy.certificates:
            names = tuple(v.decode(errors="replace") for v in
                          context.auth_context().get("x509_common_name", ()))
        token_name = None
        if policy.join_tokens and self.authenticator is not None:
            try:
                principal = self.authenticator.principal(context.invocation_metadata())
            except AuthError as exc:
                raise NodeUnauthenticatedError(f"join token: {exc}") from None
            if principal is not None and NODE in principal.roles:
                token_name = principal.name
        try:
            policy.check(node_id, Credentials(names, token_name))
        except (NodeUnauthenticatedError, NodeIdentityError) as exc:
            code = ("UNAUTHENTICATED" if isinstance(exc, NodeUnauthenticatedError)
                    else "PERMISSION_DENIED")
            self.on_denied(f"/edgeshard.v1.Fleet/{method}", code)
            log.warning("refused %s of node %r from %s: %s", method, node_id, context.peer(),
                        exc)
            raise

    @guard
    def Register(self, request, context):
        self._prove("Register", request.node_id, context)
        epoch = self.membership.register(request.node_id, request.address,
                                         convert.models(request.models), request.capacity,
                                         request.processes)
        return fleet_pb2.RegisterResponse(epoch=epoch,
                                          heartbeat_interval_s=self.heartbeat_interval)

    @guard
    def Heartbeat(self, request, context):
        self._prove("Heartbeat", request.node_id, context)
        load = request.load
        known, drained = self.membership.heartbeat(
            request.node_id, request.epoch, load.queue_depth, load.in_flight,
            load.ewma_latency_ms, load.capacity, convert.models(request.models) or None)
        if known and self.on_drift is not None and (request.drift_references
                                                    or request.drift_windows):
            self.on_drift(request.node_id, convert.node_drift(request))
        return fleet_pb2.HeartbeatResponse(reregister=not known, draining=drained)

    @guard
    def ListNodes(self, request, context):
        now = time.monotonic()
        return fleet_pb2.ListNodesResponse(
            nodes=[convert.node_info(r, now) for r in self.registry.snapshot()],
            cloud=convert.cloud_info(self.cloud()), store_fault=self.store_fault() or "")

    @guard
    def Drain(self, request, context):
        _named_node(request.node_id)
        return convert.node_info(self.membership.set_drained(request.node_id, True),
                                 time.monotonic())

    @guard
    def Undrain(self, request, context):
        _named_node(request.node_id)
        return convert.node_info(self.membership.set_drained(request.node_id, False),
                                 time.monotonic())


def _named_node(node: str) -> None:
    """``InvalidRequestError`` unless ``node`` (an id or ``HOST:PORT``) is given and of
    a length a node can have."""
    if not node or len(node) > MAX_ADDRESS_CHARS:
        raise InvalidRequestError(f"node_id: required, a node id or HOST:PORT of at most "
                                  f"{MAX_ADDRESS_CHARS} characters (`edge-coordinator nodes` "
                                  "lists them)")
