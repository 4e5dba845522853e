"""The shared status table, the servicer guard and the transport seam (real gRPC servers
on loopback, port 0)."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator import errors as coordinator_errors
from edge_node import errors as node_errors
from edgeshard import errors
from edgeshard.limits import ConcurrencyLimit
from edgeshard.rpc import RETRYABLE, guarded, status_for
from edgeshard.transport import add_port, create_server, message_options, open_channel
from protos.codec import TensorError

C = grpc.StatusCode


@pytest.mark.parametrize("exc,code", [
    (node_errors.InvalidInputError("inputs[0].shape", "bad"), C.INVALID_ARGUMENT),
    (TensorError("inputs[0].datatype", "bad"), C.INVALID_ARGUMENT),
    (node_errors.ModelNotFoundError("nope"), C.NOT_FOUND),
    (node_errors.ModelUnavailableError("loading"), C.UNAVAILABLE),
    (node_errors.OverloadedError("full"), C.RESOURCE_EXHAUSTED),
    (node_errors.DeadlineExceededError("late"), C.DEADLINE_EXCEEDED),
    (coordinator_errors.JobConflictError("taken"), C.ALREADY_EXISTS),
    (coordinator_errors.FleetSaturatedError("full"), C.RESOURCE_EXHAUSTED),
    (coordinator_errors.NoNodeAvailableError("none"), C.UNAVAILABLE),
    (coordinator_errors.JobInputError("items: bad"), C.INVALID_ARGUMENT),
    (errors.PeerStatusError("OUT_OF_RANGE", "the node said so"), C.OUT_OF_RANGE),
])
def test_one_table_maps_both_daemons_errors(exc, code):
    assert status_for(exc, "node") == (code, str(exc))


def test_anything_else_is_internal_with_a_generic_message():
    for exc in (KeyError("secret"), coordinator_errors.InvalidResultError("x"), ValueError("v")):
        assert status_for(exc, "coordinator") == (
            C.INTERNAL, "internal error (see the coordinator's log)")


def test_retryable_statuses_are_defined_once():
    assert {C.UNAVAILABLE, C.DEADLINE_EXCEEDED} == RETRYABLE
    assert {C[name] for name in errors.RETRYABLE_STATUSES} == RETRYABLE
    assert errors.PeerStatusError("UNAVAILABLE", "").retryable
    assert not errors.PeerStatusError("INVALID_ARGUMENT", "").retryable
    assert errors.PeerStatusError("INVALID_ARGUMENT", "").caller_fault
    assert not errors.PeerStatusError("INTERNAL", "").caller_fault


class Aborted(Exception):
    """What a fake context's abort raises (grpc's real abort raises too)."""


class Context:
    def __init__(self):
        self.status = None

    def abort(self, code, message):
        self.status = (code, message)
        raise Aborted


def test_guard_maps_unary_and_streaming_handlers(caplog):
    guard = guarded("node", logging.getLogger("test"))

    class Servicer:
        @guard
        def Unary(self, request, context):
            raise node_errors.ModelNotFoundError("model_name: no model 'x'")

        @guard
        def Stream(self, request, context):
            yield 1
            raise RuntimeError("bug")

    ctx = Context()
    with pytest.raises(Aborted):
        Servicer().Unary(None, ctx)
    assert ctx.status == (C.NOT_FOUND, "model_name: no model 'x'")
    ctx = Context()
    stream = Servicer().Stream(None, ctx)
    assert next(stream) == 1
    with caplog.at_level(logging.ERROR), pytest.raises(Aborted):
        next(stream)
    assert ctx.status == (C.INTERNAL, "internal error (see the node's log)")
    assert "Stream failed" in caplog.text and "RuntimeError: bug" in caplog.text


@pytest.fixture
def health_server():
    server = create_server(2, "test-grpc", message_options(1 << 20))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = add_port(server, "127.0.0.1:0")
    server.start()
    yield port
    server.stop(0).wait()


def test_a_channel_from_the_seam_reaches_a_server_from_the_seam(health_server):
    channel = open_channel(f"127.0.0.1:{health_server}", message_options(1 << 20))
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()


def test_a_port_in_use_is_an_os_error_naming_it(health_server):
    second = create_server(1, "test-grpc")
    try:
        with pytest.raises(OSError) as err:
            add_port(second, f"127.0.0.1:{health_server}")
        assert f"127.0.0.1:{health_server}" in str(err.value)
    finally:
        second.stop(0)


def test_concurrency_limit_refuses_one_more_and_frees_on_exit():
    limit = ConcurrencyLimit(1, lambda n: errors.ResourceExhaustedError(f"at {n}"))
    with limit:
        with pytest.raises(errors.ResourceExhaustedError, match="at 1"), limit:
            pass
        assert limit.current == 1
    assert limit.current == 0
    with pytest.raises(ValueError):
        ConcurrencyLimit(0, lambda n: errors.ResourceExhaustedError(""))
