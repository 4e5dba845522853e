"""Clients of Open Inference Protocol servers (edge nodes, the cloud tier).

The only coordinator module that touches generated protobuf code. Every call has a
deadline (``timeout=``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.dispatcher import ShardFailed
from coordinator.jobs import ResultRow
from protos import codec, oip_pb2
from protos.oip_service import InferenceStub

DEFAULT_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Classification:
    """A batch of answers from one classification server."""

    label: np.ndarray  # int64 [N]
    confidence: np.ndarray  # float32 [N]
    probabilities: np.ndarray | None  # float32 [N,K] when requested
    model_version: str
    node: str


class OIPClient:
    """A channel to one OIP server, with the calls the coordinator needs."""

    def __init__(self, address: str, max_message_bytes: int = DEFAULT_MESSAGE_BYTES):
        self.address = address
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ])
        self.stub = InferenceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self._input_names: dict[str, str] = {}

    def input_name(self, model: str, timeout: float = 5.0) -> str:
        """The model's (single) input tensor name, from ModelMetadata, cached."""
        name = self._input_names.get(model)
        if name is None:
            meta = self.stub.ModelMetadata(oip_pb2.ModelMetadataRequest(name=model),
                                           timeout=timeout)
            name = self._input_names[model] = meta.inputs[0].name if meta.inputs else "input"
        return name

    def wait_ready(self, timeout: float) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def server_ready(self, timeout: float = 2.0) -> bool:
        return self.stub.ServerReady(oip_pb2.ServerReadyRequest(), timeout=timeout).ready

    def classify(self, model: str, images: np.ndarray, version: str = "",
                 timeout: float = 10.0, with_probabilities: bool = False) -> Classification:
        deadline = time.monotonic() + timeout
        name = self.input_name(model, timeout)
        tensor, raw = codec.encode_input_tensor(name, images)
        wanted = ["label", "confidence"] + (["probabilities"] if with_probabilities else [])
        request = oip_pb2.ModelInferRequest(
            model_name=model, model_version=version, inputs=[tensor], raw_input_contents=[raw],
            outputs=[oip_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n)
                     for n in wanted],
        )
        response = self.stub.ModelInfer(request, timeout=max(0.001, deadline - time.monotonic()))
        return Classification(
            label=codec.decode_output(response, "label"),
            confidence=codec.decode_output(response, "confidence"),
            probabilities=(codec.decode_output(response, "probabilities")
                           if with_probabilities else None),
            model_version=response.model_version,
            node=str(codec.get_param(response.parameters, "node", "")),
        )

    def probe(self, timeout: float) -> dict[str, tuple[str, ...]] | None:
        """Health check; returns the models and versions served, or None if not SERVING.

        Models come from ModelStatistics with an empty name (one entry per loaded
        version), which every Triton-compatible server answers.
        """
        try:
            status = self.health.Check(health_pb2.HealthCheckRequest(service=""),
                                       timeout=timeout)
            if status.status != health_pb2.HealthCheckResponse.SERVING:
                return None
            stats = self.stub.ModelStatistics(oip_pb2.ModelStatisticsRequest(), timeout=timeout)
        except grpc.RpcError:
            return None
        models: dict[str, list[str]] = {}
        for s in stats.model_stats:
            models.setdefault(s.name, []).append(s.version)
        return {name: tuple(sorted(v, key=lambda x: (len(x), x))) for name, v in models.items()}

    def close(self) -> None:
        self.channel.close()


class ClientPool:
    """One channel per node address, created on first use, shared by all threads."""

    def __init__(self, max_message_bytes: int = DEFAULT_MESSAGE_BYTES):
        self._max = max_message_bytes
        self._clients: dict[str, OIPClient] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> OIPClient:
        with self._lock:
            client = self._clients.get(address)
            if client is None:
                client = self._clients[address] = OIPClient(address, self._max)
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()


def shard_runner(clients: ClientPool, deadline_s: float):
    """A ``Dispatcher`` run_shard: one batched ModelInfer per shard, with a deadline."""
    blame = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    def run(node, lease) -> list:
        try:
            out = clients.get(node.address).classify(
                lease.model, lease.array, version=str(lease.params.get("model_version", "")),
                timeout=deadline_s)
        except grpc.RpcError as exc:
            raise ShardFailed(f"{exc.code().name}: {exc.details()}",
                              node_suspect=exc.code() in blame) from None
        return [
            ResultRow(item_id=item, label=int(label), confidence=float(conf), tier="edge",
                      node=out.node or node.node_id, model_version=out.model_version)
            for item, label, conf in zip(lease.ids, out.label, out.confidence, strict=True)
        ]

    return run
