"""A bare Open Inference Protocol server: the least a Python gRPC server adds to an invoke.

Usage::

    python bench/bare_server.py MODEL_FILE [INTERPRETERS]

Serves ModelMetadata and ModelInfer for one classification model on a free loopback port
(printed on stdout as the first line), with ``INTERPRETERS`` (default 2) interpreters on
a thread-pool gRPC server, as the node does. Each request's first raw input is taken as
the model's input bytes as they are (no resizing, normalizing or quantizing), invoked,
and answered with ``label`` (INT64) and ``confidence`` (FP32, the top output value, not a
probability): no validation, batching, metrics, drift windows or health. Wrong inputs
fail the call. What an edge node adds beyond this server is its own work; what this
server adds over a raw invoke is the price of Python gRPC on the machine. An anchor for
``bench_serving.py --bare``, not a server to deploy. Runs until killed.
"""

from __future__ import annotations

import argparse
import queue
from concurrent import futures

import grpc
import numpy as np

from edge_node.errors import ModelLoadError
from edge_node.runtime import TFLiteModel
from protos import oip_pb2

SERVICE = "inference.GRPCInferenceService"


def serve(model_file: str, interpreters: int) -> None:
    with open(model_file, "rb") as fh:
        content = fh.read()
    free: queue.SimpleQueue[TFLiteModel] = queue.SimpleQueue()
    for _ in range(interpreters):
        free.put(TFLiteModel(content, source=model_file))
    probe = TFLiteModel(content, source=model_file)
    spec = probe.inputs[0]
    metadata = oip_pb2.ModelMetadataResponse(
        name="bare", platform="tflite",
        inputs=[oip_pb2.ModelMetadataResponse.TensorMetadata(
            name=spec.name, datatype="UINT8", shape=[-1, *spec.shape[1:]])])

    def model_metadata(request: oip_pb2.ModelMetadataRequest, context):
        return metadata

    def model_infer(request: oip_pb2.ModelInferRequest, context):
        rows = int(request.inputs[0].shape[0])
        x = np.frombuffer(request.raw_input_contents[0], spec.dtype).reshape(
            rows, *spec.shape[1:])
        interp = free.get()
        try:
            (out, *_) = interp.run((x,))
        finally:
            free.put(interp)
        label = out.argmax(axis=1).astype(np.int64)
        confidence = out.max(axis=1).astype(np.float32)
        tensor = oip_pb2.ModelInferResponse.InferOutputTensor
        return oip_pb2.ModelInferResponse(
            model_name=request.model_name, id=request.id,
            outputs=[tensor(name="label", datatype="INT64", shape=[rows]),
                     tensor(name="confidence", datatype="FP32", shape=[rows])],
            raw_output_contents=[label.tobytes(), confidence.tobytes()])

    handlers = {
        "ModelMetadata": grpc.unary_unary_rpc_method_handler(
            model_metadata, oip_pb2.ModelMetadataRequest.FromString,
            oip_pb2.ModelMetadataResponse.SerializeToString),
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            model_infer, oip_pb2.ModelInferRequest.FromString,
            oip_pb2.ModelInferResponse.SerializeToString),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max(8, 2 * interpreters + 4)),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Prints its port, then serves until killed.")
    p.add_argument("model_file", help="the .tflite file (a classification model)")
    p.add_argument("interpreters", nargs="?", type=int, default=2,
                   help="interpreters, one request each at a time (default 2)")
    args = p.parse_args()
    if args.interpreters < 1:
        p.error("interpreters: must be >= 1")
    try:
        serve(args.model_file, args.interpreters)
    except OSError as exc:
        p.error(f"model_file: cannot read {args.model_file} ({exc.strerror or exc})")
    except ModelLoadError as exc:
        p.error(f"model_file: {exc}")


if __name__ == "__main__":
    main()
