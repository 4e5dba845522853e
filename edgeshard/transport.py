"""The transport seam: every gRPC client channel and server port edgeshard opens.

Node and coordinator servers, the coordinator's clients of nodes and of the cloud tier,
a node's registration with its coordinator and the admin CLI all go through
``open_channel`` and ``add_port``, so credentials (TLS, mTLS) are decided in one place.
Without credentials both are plaintext, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

ChannelOption = tuple[str, int | str]


def message_options(max_message_bytes: int) -> list[ChannelOption]:
    """Channel/server options raising gRPC's 4 MiB message limit to ``max_message_bytes``
    (both directions)."""
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


def open_channel(address: str, options: Sequence[ChannelOption] = (),
                 credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A client channel to ``address`` (``host:port``).

    ``options`` are gRPC channel arguments; with ``credentials`` the channel is TLS,
    otherwise plaintext. The channel connects lazily; the caller closes it.
    """
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=list(options))
    return grpc.insecure_channel(address, options=list(options))


def add_port(server: grpc.Server, address: str,
             credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind ``server`` to ``address`` (``host:port``, port 0 picks a free one).

    Returns the bound port. Raises ``OSError`` naming the address when it cannot be
    bound (in use, or not an address of this host). TLS with ``credentials``, otherwise
    plaintext.
    """
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises instead of returning 0 in some releases
        port = 0
    if port == 0:
        raise OSError(f"port: cannot bind {address} (in use?)")
    return port
