"""Serve and call the Open Inference Protocol on its stock method paths.

Stock peers (tritonclient, perf_analyzer, Triton, MLServer) use the paths
``/inference.GRPCInferenceService/<Method>``. Our messages live in the proto
package ``edgeshard.oip`` (see oip.proto for why), so the stubs protoc
generates would use the wrong path; this module binds our messages to the
stock paths instead. The wire bytes are identical because the field numbers
are.

The handlers pass the servicer's bound methods straight to gRPC, so the same
registration works for a ``grpc.server`` (plain methods) and a
``grpc.aio.server`` (``async def`` methods).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from protos import oip_pb2

SERVICE_NAME = "inference.GRPCInferenceService"


@dataclass(frozen=True)
class Method:
    """One RPC: its name, request and response message classes, and whether it streams."""

    name: str
    request: Any
    response: Any
    streaming: bool = False

    @property
    def path(self) -> str:
        return f"/{SERVICE_NAME}/{self.name}"


METHODS: tuple[Method, ...] = (
    Method("ServerLive", oip_pb2.ServerLiveRequest, oip_pb2.ServerLiveResponse),
    Method("ServerReady", oip_pb2.ServerReadyRequest, oip_pb2.ServerReadyResponse),
    Method("ModelReady", oip_pb2.ModelReadyRequest, oip_pb2.ModelReadyResponse),
    Method("ServerMetadata", oip_pb2.ServerMetadataRequest, oip_pb2.ServerMetadataResponse),
    Method("ModelMetadata", oip_pb2.ModelMetadataRequest, oip_pb2.ModelMetadataResponse),
    Method("ModelInfer", oip_pb2.ModelInferRequest, oip_pb2.ModelInferResponse),
    Method(
        "ModelStreamInfer",
        oip_pb2.ModelInferRequest,
        oip_pb2.ModelStreamInferResponse,
        streaming=True,
    ),
    Method("ModelConfig", oip_pb2.ModelConfigRequest, oip_pb2.ModelConfigResponse),
    Method("ModelStatistics", oip_pb2.ModelStatisticsRequest, oip_pb2.ModelStatisticsResponse),
    Method("RepositoryIndex", oip_pb2.RepositoryIndexRequest, oip_pb2.RepositoryIndexResponse),
    Method("RepositoryModelLoad", oip_pb2.RepositoryModelLoadRequest,
           oip_pb2.RepositoryModelLoadResponse),
    Method("RepositoryModelUnload", oip_pb2.RepositoryModelUnloadRequest,
           oip_pb2.RepositoryModelUnloadResponse),
)
"""Every RPC this module knows, in oip.proto's order."""

METHOD_NAMES: tuple[str, ...] = tuple(m.name for m in METHODS)


def _unimplemented(context: grpc.ServicerContext) -> None:
    # abort() rather than raising: gRPC then ends the call without logging an
    # "Exception calling application" traceback for an expected answer.
    context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented")


class InferenceServicer:
    """Base servicer: every RPC answers UNIMPLEMENTED until a subclass overrides it.

    For a ``grpc.Server``. A ``grpc.aio`` servicer defines its own ``async``
    methods and need not subclass this (missing methods are UNIMPLEMENTED).
    """

    def ServerLive(self, request, context):
        _unimplemented(context)

    def ServerReady(self, request, context):
        _unimplemented(context)

    def ModelReady(self, request, context):
        _unimplemented(context)

    def ServerMetadata(self, request, context):
        _unimplemented(context)

    def ModelMetadata(self, request, context):
        _unimplemented(context)

    def ModelInfer(self, request, context):
        _unimplemented(context)

    def ModelStreamInfer(self, request_iterator, context):
        _unimplemented(context)

    def ModelConfig(self, request, context):
        _unimplemented(context)

    def ModelStatistics(self, request, context):
        _unimplemented(context)

    def RepositoryIndex(self, request, context):
        _unimplemented(context)

    def RepositoryModelLoad(self, request, context):
        _unimplemented(context)

    def RepositoryModelUnload(self, request, context):
        _unimplemented(context)


def _handler(method: Method, behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler:
    if method.streaming:
        make = grpc.stream_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(
        behaviour,
        request_deserializer=method.request.FromString,
        response_serializer=method.response.SerializeToString,
    )


def method_handlers(servicer: object) -> dict[str, grpc.RpcMethodHandler]:
    """Handlers for the RPCs ``servicer`` defines, keyed by method name.

    A method the servicer lacks gets no handler, so gRPC itself answers
    UNIMPLEMENTED for it.
    """
    handlers = {}
    for method in METHODS:
        behaviour = getattr(servicer, method.name, None)
        if callable(behaviour):
            handlers[method.name] = _handler(method, behaviour)
    return handlers


def add_inference_servicer_to_server(servicer: object, server: grpc.Server) -> None:
    """Serve ``servicer`` at ``/inference.GRPCInferenceService/<Method>`` on ``server``.

    ``server`` may be a ``grpc.Server`` or a ``grpc.aio.Server``.
    """
    handlers = method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    # Registered handlers skip the generic lookup per call (grpcio >= 1.63).
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class InferenceStub:
    """Client of any OIP server (Triton, MLServer, an edgeshard node).

    Each attribute is a gRPC multicallable taking our ``edgeshard.oip``
    messages, e.g. ``stub.ModelInfer(request, timeout=2.0)``;
    ``ModelStreamInfer`` is stream-stream. Works with ``grpc.Channel`` and
    ``grpc.aio.Channel``.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        for method in METHODS:
            make = channel.stream_stream if method.streaming else channel.unary_unary
            setattr(
                self,
                method.name,
                make(
                    method.path,
                    request_serializer=method.request.SerializeToString,
                    response_deserializer=method.response.FromString,
                    _registered_method=True,
                ),
            )

    # Declared for type checkers and readers; set in __init__.
    ServerLive: grpc.UnaryUnaryMultiCallable
    ServerReady: grpc.UnaryUnaryMultiCallable
    ModelReady: grpc.UnaryUnaryMultiCallable
    ServerMetadata: grpc.UnaryUnaryMultiCallable
    ModelMetadata: grpc.UnaryUnaryMultiCallable
    ModelInfer: grpc.UnaryUnaryMultiCallable
    ModelStreamInfer: grpc.StreamStreamMultiCallable
    ModelConfig: grpc.UnaryUnaryMultiCallable
    ModelStatistics: grpc.UnaryUnaryMultiCallable
