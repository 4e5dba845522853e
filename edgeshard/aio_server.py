"""A ``grpc.aio`` server that threaded code can own: long-lived streams cost no thread.

The synchronous gRPC server gives every call a thread for its whole life, so a few dozen
``Watch`` or ``FetchResults(follow)`` streams (each ``edge-coordinator submit`` holds
one, dashboards hold more) used to take every handler thread. This server runs on an
event loop of its own, in one thread: handlers written as ``async def`` (the following
streams) run on the loop and hold nothing while they wait; plain handlers (every unary
call, client-streamed uploads) run on a bounded thread pool, as before, through
grpc.aio's ``migration_thread_pool``.

``AioServer`` offers what ``grpc.Server`` offers to the code that builds a server
(``add_generic_rpc_handlers``, ``add_registered_method_handlers``, ports, ``start``,
``stop(grace).wait()``) and does each on the loop's thread, where grpc.aio objects must
be used. Coroutines of handlers must not block: they run store reads and other blocking
work with ``run_blocking``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent import futures
from typing import TypeVar

import grpc

from edgeshard.errors import BindError
from edgeshard.transport import ChannelOption

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Stopped:
    """What ``AioServer.stop`` returns: ``wait()`` blocks until the server has stopped."""

    def __init__(self, future: futures.Future):
        self._future = future

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped (True) or ``timeout`` seconds passed (False)."""
        try:
            self._future.result(timeout)
            return True
        except futures.TimeoutError:
            return False


class AioServer:
    """A grpc.aio server on its own event loop thread (``<thread_name_prefix>-loop``).

    ``max_workers`` threads run the synchronous handlers; ``blocking_workers`` threads
    run what coroutines hand to ``run_blocking``. ``interceptors`` are
    ``grpc.aio.ServerInterceptor``. Ports are added with ``add_port``.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str,
                 options: Sequence[ChannelOption] = (),
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                 blocking_workers: int = 8):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name=f"{thread_name_prefix}-loop", daemon=True)
        self._thread.start()
        self._handlers = futures.ThreadPoolExecutor(max_workers=max_workers,
                                                    thread_name_prefix=thread_name_prefix)
        self._blocking = futures.ThreadPoolExecutor(max_workers=blocking_workers,
                                                    thread_name_prefix=f"{thread_name_prefix}-io")
        self._at_stop: list[Callable[[], Awaitable[None]]] = []
        self._server: grpc.aio.Server = self.on_loop(lambda: grpc.aio.server(
            migration_thread_pool=self._handlers, interceptors=list(interceptors),
            options=[*options, ("grpc.so_reuseport", 0)]))

    # -- running things on the loop ---------------------------------------------------------
    def on_loop(self, fn: Callable[[], T]) -> T:
        """Call ``fn()`` on the loop's thread and return its result (or raise its error)."""
        async def call() -> T:
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def _await(self, make: Callable[[], Awaitable[T]]) -> futures.Future:
        async def call() -> T:
            return await make()
        return asyncio.run_coroutine_threadsafe(call(), self._loop)

    async def run_blocking(self, fn: Callable[..., T], *args) -> T:
        """For coroutines on the loop: ``fn(*args)`` on the blocking pool, awaited."""
        return await self._loop.run_in_executor(self._blocking, fn, *args)

    def at_stop(self, close: Callable[[], Awaitable[None]]) -> None:
        """Have ``stop`` await ``close()`` on the loop once the server has stopped (to close
        what handlers opened on the loop, e.g. grpc.aio channels)."""
        self._at_stop.append(close)

    # -- what code building a grpc.Server calls ----------------------------------------------
    def add_generic_rpc_handlers(self, handlers) -> None:
        """As ``grpc.Server.add_generic_rpc_handlers``."""
        self.on_loop(lambda: self._server.add_generic_rpc_handlers(handlers))

    def add_registered_method_handlers(self, service_name: str, handlers) -> None:
        """As ``grpc.Server.add_registered_method_handlers``."""
        self.on_loop(lambda: self._server.add_registered_method_handlers(service_name,
                                                                         handlers))

    def add_port(self, address: str, credentials: grpc.ServerCredentials | None = None,
                 field: str = "port") -> int:
        """Bind to ``address`` (port 0 picks one); returns the port. ``BindError`` naming
        ``field`` when it cannot. TLS with ``credentials``, else plaintext."""
        def bind() -> int:
            if credentials is not None:
                return self._server.add_secure_port(address, credentials)
            return self._server.add_insecure_port(address)
        try:
            port = self.on_loop(bind)
        except RuntimeError:
            port = 0
        if port == 0:
            raise BindError(field, address)
        return port

    def start(self) -> None:
        """Start serving; returns once the server runs."""
        self._await(self._server.start).result()

    def stop(self, grace: float | None) -> _Stopped:
        """Refuse new calls, give those in flight ``grace`` seconds, then cancel them and
        end the loop thread. ``wait()`` on the result blocks until that is done."""
        done: futures.Future = futures.Future()

        async def stop() -> None:
            await self._server.stop(grace)
            for close in self._at_stop:
                await close()

        def finished(_: futures.Future) -> None:  # on the loop's thread
            self._handlers.shutdown(wait=False, cancel_futures=True)
            self._blocking.shutdown(wait=False, cancel_futures=True)
            self._loop.call_soon(self._loop.stop)  # the thread ends after this turn
            done.set_result(None)

        self._await(stop).add_done_callback(finished)
        return _Stopped(done)
