"""Which role each coordinator RPC needs: the one table the auth interceptor consults.

Health and reflection stay open (load balancers, ``buf curl``), as do the Open Inference
Protocol's ServerLive and ServerReady (they are its health checks). Register and
Heartbeat are the nodes' door: a node proves its identity there (client certificate or
join token, ``coordinator.fleet.admission``), not a role. A method not listed needs
``admin``: nothing new is open by accident.
"""

from __future__ import annotations

from edgeshard.auth import ADMIN, INFER, JOBS, OPEN

NODE_DOOR = "node-door"  # checked by the Fleet servicer against the node's identity

OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")
OIP_SERVICE = "inference.GRPCInferenceService"

ACCESS: dict[str, str] = {
    f"/{OIP_SERVICE}/ServerLive": OPEN,
    f"/{OIP_SERVICE}/ServerReady": OPEN,
    **{f"/{OIP_SERVICE}/{m}": INFER for m in (
        "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelStreamInfer",
        "ModelConfig", "ModelStatistics", "RepositoryIndex")},
    f"/{OIP_SERVICE}/RepositoryModelLoad": ADMIN,
    f"/{OIP_SERVICE}/RepositoryModelUnload": ADMIN,
    "/edgeshard.v1.Fleet/Register": NODE_DOOR,
    "/edgeshard.v1.Fleet/Heartbeat": NODE_DOOR,
    "/edgeshard.v1.Fleet/ListNodes": INFER,
    "/edgeshard.v1.Fleet/Drain": ADMIN,
    "/edgeshard.v1.Fleet/Undrain": ADMIN,
    **{f"/edgeshard.v1.Jobs/{m}": JOBS for m in (
        "Submit", "Watch", "FetchResults", "Cancel", "GetJob", "ListJobs")},
    **{f"/edgeshard.v1.Rollouts/{m}": ADMIN for m in ("Status", "Start", "Promote", "Rollback")},
    "/edgeshard.v1.Examples/Export": ADMIN,  # the items themselves: admin only
}


def required_role(method: str) -> str:
    """The role ``method`` (``/package.Service/Method``) needs, ``OPEN`` for none, or
    ``NODE_DOOR`` (treated as open by the interceptor; the servicer checks identity)."""
    role = ACCESS.get(method)
    if role is not None:
        return OPEN if role == NODE_DOOR else role
    service = method.strip("/").split("/", 1)[0]
    return OPEN if service in OPEN_SERVICES else ADMIN
