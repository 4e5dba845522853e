"""Calls to nodes from coroutines on the coordinator's API event loop (grpc.aio).

The online front's ModelInfer runs on the event loop of the coordinator's grpc.aio
server: the request is read, routed, forwarded to a node and answered without handing
it to a thread and back (each hand-off costs a thread wake-up, on a loaded machine
tens to hundreds of microseconds). ``AioNodeChannels`` keeps the loop's channels to the
nodes, as ``ClientPool`` keeps the threads' ones: one per node, or
``connections_per_process`` per serving process of a node that has several.
"""

from __future__ import annotations

import grpc

from coordinator.api.clients import DEFAULT_MESSAGE_BYTES, connections_for, next_turn
from coordinator.fleet.forwarder import AsyncNodeCall
from coordinator.fleet.registry import NodeRecord
from edgeshard.rpc import peer_error
from edgeshard.transport import message_options, open_aio_channel
from protos.oip_service import InferenceStub


class AioNodeChannels:
    """grpc.aio channels to node addresses, opened on first use. Use it on one event
    loop's thread only (grpc.aio channels belong to the loop they were opened on); TLS
    with ``credentials``, else plaintext."""

    def __init__(self, max_message_bytes: int = DEFAULT_MESSAGE_BYTES,
                 credentials: grpc.ChannelCredentials | None = None,
                 connections_per_process: int = 4):
        self._options = message_options(max_message_bytes)
        self._credentials = credentials
        self.connections_per_process = connections_per_process
        self._stubs: dict[str, list[InferenceStub]] = {}
        self._channels: list[grpc.aio.Channel] = []
        self._turns: dict[str, int] = {}

    def stub(self, node: NodeRecord) -> InferenceStub:
        """The OIP stub for a call to ``node``: the next of its connections."""
        count = connections_for(node, self.connections_per_process)
        stubs = self._stubs.setdefault(node.address, [])
        while len(stubs) < count:
            # each its own TCP connection, apart from the threads' channels too
            channel = open_aio_channel(node.address,
                                       [*self._options, ("grpc.use_local_subchannel_pool", 1)],
                                       self._credentials)
            self._channels.append(channel)
            stubs.append(InferenceStub(channel))
        if count == 1:
            return stubs[0]
        return stubs[next_turn(self._turns, node.address, count)]

    async def close(self) -> None:
        """Close every channel (on the loop); calls still in flight are cancelled."""
        channels, self._channels, self._stubs = self._channels, [], {}
        for channel in channels:
            await channel.close()


def node_call_async(channels: AioNodeChannels, method: str, request) -> AsyncNodeCall:
    """A ``fleet.forwarder.AsyncNodeCall`` that sends ``request`` as-is to a node's OIP
    ``method``, a node's error status raised as ``PeerStatusError``."""

    async def call(node: NodeRecord, timeout: float):
        try:
            return await getattr(channels.stub(node), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise peer_error(exc, f"node {node.node_id} failed") from None

    return call
