"""The role table the coordinator's auth interceptor consults (issue 10, item 3)."""

from __future__ import annotations

import pytest

from coordinator.api.access import ACCESS, required_role
from edgeshard.auth import ADMIN, INFER, JOBS, OPEN
from protos import examples_pb2, fleet_pb2


@pytest.mark.parametrize("method, role", [
    ("/grpc.health.v1.Health/Check", OPEN), ("/grpc.health.v1.Health/Watch", OPEN),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", OPEN),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", OPEN),
    ("/inference.GRPCInferenceService/ServerLive", OPEN),
    ("/inference.GRPCInferenceService/ModelInfer", INFER),
    ("/inference.GRPCInferenceService/RepositoryModelLoad", ADMIN),
    ("/edgeshard.v1.Fleet/Register", OPEN),  # the servicer checks the node's identity
    ("/edgeshard.v1.Fleet/ListNodes", INFER), ("/edgeshard.v1.Fleet/Drain", ADMIN),
    ("/edgeshard.v1.Jobs/Submit", JOBS), ("/edgeshard.v1.Jobs/Cancel", JOBS),
    ("/edgeshard.v1.Rollouts/Status", ADMIN), ("/edgeshard.v1.Rollouts/Rollback", ADMIN),
    ("/edgeshard.v1.Examples/Export", ADMIN),
    ("/edgeshard.v1.Fleet/SomethingNew", ADMIN), ("/x.Y/Z", ADMIN),
])
def test_each_method_needs_its_role_and_anything_unlisted_needs_admin(method, role):
    assert required_role(method) == role


def test_every_control_rpc_is_in_the_table():
    for file, service in ((fleet_pb2, "Fleet"), (fleet_pb2, "Jobs"), (fleet_pb2, "Rollouts"),
                          (examples_pb2, "Examples")):
        for method in file.DESCRIPTOR.services_by_name[service].methods:
            assert f"/edgeshard.v1.{service}/{method.name}" in ACCESS
