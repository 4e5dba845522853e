"""gRPC server reflection that presents our messages as the stock ``inference`` package.

Reflection clients (buf curl, grpc_requests, grpc_reflection's descriptor
database) look the service up by the name it is served under,
``inference.GRPCInferenceService``. Our generated messages live in
``edgeshard.oip`` (see oip.proto), so reflection cannot use the default
descriptor pool: it would advertise a service that does not exist on the wire,
and adding ``inference.*`` to the default pool would break any process that
also imports tritonclient or MLServer.

Instead this module builds a private ``DescriptorPool`` with a copy of
oip.proto and model_config.proto rewritten to package ``inference`` (file
names ``inference/oip.proto`` and ``inference/model_config.proto``, every
``.edgeshard.oip.X`` type reference renamed ``.inference.X``), plus copies of
the health and reflection protos and of any extra files the caller serves.
The default pool is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from protos import model_config_pb2, oip_pb2
from protos.oip_service import SERVICE_NAME

OUR_PACKAGE = "edgeshard.oip"
WIRE_PACKAGE = "inference"

_RENAMED_FILES = {
    oip_pb2.DESCRIPTOR.name: "inference/oip.proto",
    model_config_pb2.DESCRIPTOR.name: "inference/model_config.proto",
}

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def _rename_type(type_name: str) -> str:
    prefix = f".{OUR_PACKAGE}."
    if type_name.startswith(prefix):
        return f".{WIRE_PACKAGE}.{type_name[len(prefix) :]}"
    return type_name


def _rename_message(message: descriptor_pb2.DescriptorProto) -> None:
    for field in (*message.field, *message.extension):
        if field.type_name:
            field.type_name = _rename_type(field.type_name)
        if field.extendee:
            field.extendee = _rename_type(field.extendee)
    for nested in message.nested_type:
        _rename_message(nested)


def wire_file_proto(file: descriptor.FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    """A copy of one of our proto files as the stock ``inference`` package would declare it."""
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    if proto.package != OUR_PACKAGE:
        raise ValueError(f"{file.name} is in package {proto.package!r}, not {OUR_PACKAGE!r}")
    proto.name = _RENAMED_FILES.get(proto.name, proto.name)
    proto.package = WIRE_PACKAGE
    deps = [_RENAMED_FILES.get(dep, dep) for dep in proto.dependency]
    del proto.dependency[:]
    proto.dependency.extend(deps)
    for message in proto.message_type:
        _rename_message(message)
    for field in proto.extension:
        field.type_name = _rename_type(field.type_name)
        field.extendee = _rename_type(field.extendee)
    for service in proto.service:
        for method in service.method:
            method.input_type = _rename_type(method.input_type)
            method.output_type = _rename_type(method.output_type)
    return proto


def _add_with_dependencies(
    pool: descriptor_pool.DescriptorPool, file: descriptor.FileDescriptor, added: set[str]
) -> None:
    if file.name in added:
        return
    for dependency in file.dependencies:
        _add_with_dependencies(pool, dependency, added)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    pool.Add(proto)
    added.add(file.name)


def build_reflection_pool(
    extra_file_descriptors: Iterable[descriptor.FileDescriptor] = (),
) -> descriptor_pool.DescriptorPool:
    """A private pool holding the ``inference`` view of our protos, health, reflection and extras.

    Extra files are copied together with their dependencies; a file already
    added (by name) is skipped.
    """
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    for ours in (model_config_pb2.DESCRIPTOR, oip_pb2.DESCRIPTOR):
        pool.Add(wire_file_proto(ours))
        added.add(ours.name)  # the originals never enter this pool
    for file in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR, *extra_file_descriptors):
        _add_with_dependencies(pool, file, added)
    return pool


def enable_reflection(
    server,
    extra_service_names: Iterable[str] = (),
    extra_file_descriptors: Iterable[descriptor.FileDescriptor] = (),
) -> descriptor_pool.DescriptorPool:
    """Serve gRPC reflection (v1alpha) on ``server`` (``grpc.Server`` or ``grpc.aio.Server``).

    Lists ``inference.GRPCInferenceService``, ``grpc.health.v1.Health``, the
    reflection service itself and ``extra_service_names``; the files of any
    extra services must be passed as ``extra_file_descriptors`` for clients
    to resolve them. Returns the private pool it serves from.
    """
    pool = build_reflection_pool(extra_file_descriptors)
    names = dict.fromkeys(
        (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME, *extra_service_names)
    )
    reflection.enable_server_reflection(tuple(names), server, pool=pool)
    return pool
