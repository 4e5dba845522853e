"""The transport seam: every gRPC client channel and server port edgeshard opens.

Node and coordinator servers, the coordinator's clients of nodes and of the cloud tier,
a node's registration with its coordinator and the admin CLI all go through
``create_server`` + ``add_port`` and ``open_channel``, so credentials (TLS, mTLS) and
options are decided in one place.
Without credentials both are plaintext, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent import futures

import grpc

from edgeshard.errors import BindError

ChannelOption = tuple[str, int | str]


def message_options(max_message_bytes: int) -> list[ChannelOption]:
    """Channel/server options raising gRPC's 4 MiB message limit to ``max_message_bytes``
    (both directions)."""
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


def create_server(max_workers: int, thread_name_prefix: str,
                  options: Sequence[ChannelOption] = (),
                  maximum_concurrent_rpcs: int | None = None,
                  interceptors: Sequence[grpc.ServerInterceptor] = (),
                  reuse_port: bool = False) -> grpc.Server:
    """A gRPC server with ``max_workers`` handler threads; one RPC more than
    ``maximum_concurrent_rpcs`` (None: no bound) is answered RESOURCE_EXHAUSTED by gRPC.
    ``interceptors`` see every call first (``edgeshard.auth.AuthInterceptor``). Ports are
    added with ``add_port``. ``SO_REUSEPORT`` is off unless ``reuse_port`` (the serving
    processes of one node share their port), so a port in use is an error rather than
    shared."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers,
                                   thread_name_prefix=thread_name_prefix),
        maximum_concurrent_rpcs=maximum_concurrent_rpcs, interceptors=list(interceptors),
        options=[*options, ("grpc.so_reuseport", int(reuse_port))],
    )


# A peer that was away (a restarted coordinator or node, a cloud outage) is connected to
# again within 2 s of its return, not on gRPC's default back-off that grows to 2 minutes.
RECONNECT_OPTIONS: tuple[ChannelOption, ...] = (("grpc.max_reconnect_backoff_ms", 2000),)


def _with_reconnect(options: Sequence[ChannelOption]) -> list[ChannelOption]:
    """``options`` added to (and overriding) ``RECONNECT_OPTIONS``."""
    return list({**dict(RECONNECT_OPTIONS), **dict(options)}.items())


def open_channel(address: str, options: Sequence[ChannelOption] = (),
                 credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None) -> grpc.Channel:
    """A client channel to ``address`` (``host:port``).

    ``options`` are gRPC channel arguments, added to (and overriding) ``RECONNECT_OPTIONS``;
    with ``credentials`` the channel is TLS, otherwise plaintext. With ``token`` every call
    carries ``authorization: Bearer <token>`` (``edgeshard.auth``). The channel connects
    lazily; the caller closes it.
    """
    merged = _with_reconnect(options)
    if credentials is not None:
        channel = grpc.secure_channel(address, credentials, options=merged)
    else:
        channel = grpc.insecure_channel(address, options=merged)
    if token:
        from edgeshard.auth import BearerTokenInterceptor

        channel = grpc.intercept_channel(channel, BearerTokenInterceptor(token))
    return channel


def open_aio_channel(address: str, options: Sequence[ChannelOption] = (),
                     credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    """``open_channel`` for coroutines: a ``grpc.aio`` channel, bound to the running event
    loop (open, use and close it on that loop's thread). No bearer token: the coordinator
    calls its nodes with none."""
    merged = _with_reconnect(options)
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=merged)
    return grpc.aio.insecure_channel(address, options=merged)


def add_port(server: grpc.Server, address: str,
             credentials: grpc.ServerCredentials | None = None, field: str = "port") -> int:
    """Bind ``server`` to ``address`` (``host:port``, port 0 picks a free one).

    Returns the bound port. Raises ``BindError`` (an ``OSError``) naming ``field`` (the
    setting that chose the address) and the address when it cannot be bound (in use, or
    not an address of this host). TLS with ``credentials``, otherwise plaintext.
    """
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises instead of returning 0 in some releases
        port = 0
    if port == 0:
        raise BindError(field, address)
    return port
