"""Health, graceful drain on SIGTERM, queue bounds and metrics of a real node process."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import edgeshard_models
from protos import oip_pb2
from protos.oip_service import InferenceStub

EDGE, CLOUD = edgeshard_models.EDGE_MODEL, edgeshard_models.CLOUD_MODEL


def infer_request(model=EDGE, n=1):
    return oip_pb2.ModelInferRequest(
        model_name=model,
        inputs=[oip_pb2.ModelInferRequest.InferInputTensor(
            name="image", datatype="UINT8", shape=[n, 28, 28])],
        raw_input_contents=[np.zeros((n, 28, 28), np.uint8).tobytes()],
    )


def test_health_serving_and_reflection(node):
    channel = grpc.insecure_channel(node.address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "inference.GRPCInferenceService" in services
        assert "grpc.health.v1.Health" in services
    finally:
        channel.close()


def test_metrics_endpoint(node):
    channel = grpc.insecure_channel(node.address)
    try:
        InferenceStub(channel).ModelInfer(infer_request(n=3), timeout=10)
    finally:
        channel.close()
    url = f"http://127.0.0.1:{node.info['metrics_port']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'edgeshard_node_requests_total{model="mnist_edge",outcome="success",version="1"}' in text
    for phase in ("queue", "preprocess", "inference", "postprocess", "total"):
        assert f'edgeshard_node_request_seconds_count{{model="mnist_edge",phase="{phase}"}}' in text
    assert "edgeshard_node_queue_depth" in text
    assert 'edgeshard_node_model_ready{model="mnist_edge",version="1"} 1.0' in text


def test_sigterm_drains_in_flight_then_exits_zero(start, shipped_repository):
    # A long batching delay keeps a request in flight when SIGTERM arrives.
    proc = start(shipped_repository, "--max-batch-delay-ms", "1500", "--grace-seconds", "10",
                 "--workers", "1", name="drain")
    channel = grpc.insecure_channel(proc.address)
    stub = InferenceStub(channel)
    result: dict = {}

    def call():
        try:
            result["response"] = stub.ModelInfer(infer_request(n=2), timeout=20)
        except grpc.RpcError as exc:  # pragma: no cover - reported by the assert below
            result["error"] = exc

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.4)  # the request is now waiting in the batcher
    proc.process.send_signal(signal.SIGTERM)
    t.join(20)
    assert "error" not in result, result.get("error")
    assert len(result["response"].outputs) == 3
    assert proc.process.wait(20) == 0
    assert "draining" in proc.log_tail(20)
    channel.close()


def test_full_queue_answers_resource_exhausted(start, shipped_repository):
    proc = start(shipped_repository, "--workers", "1", "--max-queue-size", "1",
                 "--max-batch-delay-ms", "1500", name="tiny-queue")
    channel = grpc.insecure_channel(proc.address)
    stub = InferenceStub(channel)
    try:
        # The only worker holds an edge batch open for 1.5 s; the cloud requests queue.
        first = stub.ModelInfer.future(infer_request(EDGE), timeout=20)
        time.sleep(0.3)
        queued = stub.ModelInfer.future(infer_request(CLOUD), timeout=20)
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(infer_request(CLOUD), timeout=20)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in err.value.details()
        assert len(first.result().outputs) == 3  # nothing accepted was lost
        assert len(queued.result().outputs) == 3
    finally:
        channel.close()


def test_deadline_exceeded_while_queued(start, shipped_repository):
    proc = start(shipped_repository, "--workers", "1", "--max-batch-delay-ms", "1500",
                 name="deadline")
    channel = grpc.insecure_channel(proc.address)
    stub = InferenceStub(channel)
    try:
        first = stub.ModelInfer.future(infer_request(EDGE), timeout=20)
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(infer_request(CLOUD), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(first.result().outputs) == 3
        assert len(stub.ModelInfer(infer_request(CLOUD), timeout=10).outputs) == 3
    finally:
        channel.close()


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_a_port_in_use_is_named_with_its_flag(flag, busy_port, shipped_repository):
    out = subprocess.run([sys.executable, "-m", "edge_node", "--model-repository",
                          str(shipped_repository), "--host", "127.0.0.1", "--workers", "1",
                          *busy_port.flags(flag)],
                         capture_output=True, text=True, timeout=60)
    busy_port.assert_refused(out, flag)
