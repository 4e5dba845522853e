"""Clients of Open Inference Protocol servers (edge nodes, the cloud tier).

The only coordinator module that touches generated protobuf code. Every call has a
deadline (``timeout=``).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

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

    def wait_ready(self, timeout: float) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def server_ready(self, timeout: float = 2.0) -> bool:
        return self.stub.ServerReady(oip_pb2.ServerReadyRequest(), timeout=timeout).ready

    def classify(self, model: str, images: np.ndarray, input_name: str = "image",
                 version: str = "", timeout: float = 10.0,
                 with_probabilities: bool = False) -> Classification:
        tensor, raw = codec.encode_input_tensor(input_name, images)
        wanted = ["label", "confidence"] + (["probabilities"] if with_probabilities else [])
        request = oip_pb2.ModelInferRequest(
            model_name=model, model_version=version, inputs=[tensor], raw_input_contents=[raw],
            outputs=[oip_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n)
                     for n in wanted],
        )
        response = self.stub.ModelInfer(request, timeout=timeout)
        return Classification(
            label=codec.decode_output(response, "label"),
            confidence=codec.decode_output(response, "confidence"),
            probabilities=(codec.decode_output(response, "probabilities")
                           if with_probabilities else None),
            model_version=response.model_version,
            node=str(codec.get_param(response.parameters, "node", "")),
        )

    def close(self) -> None:
        self.channel.close()
