"""A stand-in edge node that answers every classification at once, for coordinator benchmarks.

It speaks the Open Inference Protocol like ``edge-node`` (health, ModelStatistics for the
coordinator's probe, ModelMetadata, ModelConfig, ModelInfer) but runs no model: each item
gets label 0 with confidence 1.0. With it the coordinator is the only thing doing work,
so its CPU per item can be measured (bench/bench_jobpath.py). Not a test double: tests
use real nodes.

Usage::

    python bench/instant_node.py --model mnist_edge --ready-file F [--port 0]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeshard.transport import add_port, create_server, message_options  # noqa: E402
from protos import codec, oip_pb2  # noqa: E402
from protos import model_config_pb2 as mc  # noqa: E402
from protos.oip_service import InferenceServicer, add_inference_servicer_to_server  # noqa: E402


class InstantServicer(InferenceServicer):
    """Label 0, confidence 1.0 for every item of ``model``; answers cached per batch size."""

    def __init__(self, model: str, max_batch: int):
        self.model = model
        self.max_batch = max_batch
        self._answers: dict[int, oip_pb2.ModelInferResponse] = {}

    def ServerLive(self, request, context):  # noqa: D102
        return oip_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):  # noqa: D102
        return oip_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):  # noqa: D102
        return oip_pb2.ModelReadyResponse(ready=request.name == self.model)

    def ModelMetadata(self, request, context):  # noqa: D102
        return oip_pb2.ModelMetadataResponse(
            name=self.model, versions=["1"], platform="instant",
            inputs=[oip_pb2.ModelMetadataResponse.TensorMetadata(
                name="image", datatype="UINT8", shape=[-1, 28, 28])])

    def ModelConfig(self, request, context):  # noqa: D102
        return oip_pb2.ModelConfigResponse(config=mc.ModelConfig(
            name=self.model, max_batch_size=self.max_batch,
            parameters={"labels": mc.ModelParameter(string_value=",".join("0123456789"))}))

    def ModelStatistics(self, request, context):  # noqa: D102
        return oip_pb2.ModelStatisticsResponse(
            model_stats=[oip_pb2.ModelStatistics(name=self.model, version="1")])

    def ModelInfer(self, request, context):  # noqa: D102
        n = int(request.inputs[0].shape[0]) if request.inputs and request.inputs[0].shape else 1
        answer = self._answers.get(n)
        if answer is None:
            answer = oip_pb2.ModelInferResponse(model_name=self.model, model_version="1")
            codec.encode_outputs(answer, {"label": np.zeros(n, np.int64),
                                          "confidence": np.ones(n, np.float32)})
            self._answers[n] = answer
        return answer


def main() -> int:
    """Serve until SIGTERM/SIGINT; the ready file gets ``{"grpc_port": P}``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mnist_edge")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--ready-file", type=Path, required=True)
    args = p.parse_args()
    server = create_server(args.workers, "instant", message_options(64 << 20))
    add_inference_servicer_to_server(InstantServicer(args.model, args.max_batch), server)
    checks = health.HealthServicer()
    checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = add_port(server, f"127.0.0.1:{args.port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    args.ready_file.write_text(json.dumps({"grpc_port": port, "pid": os.getpid()}))
    stop.wait()
    server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
