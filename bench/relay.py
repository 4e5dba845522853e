"""A bare gRPC relay: the least any Python front adds to a call (an anchor for bench_fleet).

Usage::

    python bench/relay.py NODE_ADDRESS [NODE_ADDRESS ...]

Serves every gRPC method on a free loopback port (printed on stdout as the first line)
and forwards each call's bytes unparsed to the next node address in turn, on one
grpc.aio event loop: no routing decision, no accounting, no protobuf parsing. What the
coordinator adds beyond this relay is its own work; what the relay adds over calling a
node directly is the price of one more Python gRPC hop on the machine. Runs until killed.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

import grpc


async def serve(targets: list[str]) -> None:
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    turn = itertools.cycle(range(len(channels)))

    class Relay(grpc.GenericRpcHandler):
        def service(self, details):
            method = details.method

            async def relay(request: bytes, context) -> bytes:
                call = channels[next(turn)].unary_unary(method)
                try:
                    return await call(request, timeout=context.time_remaining())
                except grpc.aio.AioRpcError as exc:
                    await context.abort(exc.code(), exc.details() or "")

            return grpc.unary_unary_rpc_method_handler(relay)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([Relay()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    asyncio.run(serve(sys.argv[1:]))
