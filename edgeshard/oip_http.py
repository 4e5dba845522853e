"""The Open Inference Protocol's HTTP/REST binding, served by aiohttp for either daemon.

``OipHttpServer`` is a front over the same servicer the gRPC server uses: each route
builds the RPC's request message (``protos.rest``), calls the servicer's gRPC-free method
(``model_infer(request, timeout)`` and its siblings) and writes the answer as JSON, so
validation, routing and errors are the gRPC path's own. Errors are ``{"error": "..."}``
with the HTTP status ``edgeshard.rpc.HTTP_STATUS`` gives the gRPC status
(400 bad input, 404 unknown model, 429 overloaded, 503 not ready or draining, 504
deadline); anything unexpected is a 500 with a generic message and its traceback in the
log.

It runs on an event loop of its own, in one thread (``<name>-loop``), as ``AioServer``
runs grpc.aio. The servicers' methods block (the node waits for its batcher, the
coordinator for a node), so they run on thread pools: inference on one bounded by
``max_in_flight`` (beyond it: 429), metadata, config and statistics on another, so they
never wait behind inference; health checks answer on the loop itself.

With an ``Authenticator`` each route needs the role of its RPC (``Authorization: Bearer``
header); with TLS files the server speaks HTTPS with the gRPC server's certificate, and
requires client certificates when the gRPC server does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any, Protocol

from aiohttp import web

from edgeshard.auth import Authenticator, NotAuthenticatedError
from edgeshard.errors import BindError, InvalidArgumentError, ResourceExhaustedError
from edgeshard.rpc import http_status_for
from edgeshard.tls import TLSFiles, server_ssl_context
from protos import oip_pb2, rest
from protos.parameters import set_param

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
JSON = "application/json"


class InferenceFront(Protocol):
    """What the server calls: a servicer's gRPC-free methods, each taking the RPC's
    request message and the seconds left (None: no deadline given)."""

    def server_live(self, request, timeout=None): ...  # noqa: D102
    def server_ready(self, request, timeout=None): ...  # noqa: D102
    def server_metadata(self, request, timeout=None): ...  # noqa: D102
    def model_ready(self, request, timeout=None): ...  # noqa: D102
    def model_metadata(self, request, timeout=None): ...  # noqa: D102
    def model_config(self, request, timeout=None): ...  # noqa: D102
    def model_statistics(self, request, timeout=None): ...  # noqa: D102
    def model_infer(self, request, timeout=None): ...  # noqa: D102


class _Stopped:
    """What ``OipHttpServer.stop`` returns: ``wait()`` blocks until it has stopped."""

    def __init__(self, future: futures.Future | None):
        self._future = future

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped (True) or ``timeout`` seconds passed (False)."""
        if self._future is None:
            return True
        try:
            self._future.result(timeout)
            return True
        except futures.TimeoutError:
            return False


class OipHttpServer:
    """REST front of ``front`` for ``process`` ("node", "coordinator": named in errors).

    ``max_body`` caps a request body (the gRPC server's message limit; beyond it: 413);
    ``workers`` threads run inference, of which at most ``max_in_flight`` requests may be
    in the server at once. ``authenticator`` (None: open) checks bearer tokens; ``tls``
    serves HTTPS.
    """

    def __init__(self, front: InferenceFront, process: str, *, max_body: int,
                 workers: int, max_in_flight: int,
                 authenticator: Authenticator | None = None,
                 tls: TLSFiles | None = None, name: str = "http"):
        self.front = front
        self.process = process
        self.max_body = max_body
        self.max_in_flight = max_in_flight
        self.authenticator = authenticator
        self._ssl = server_ssl_context(tls) if tls is not None else None
        self._name = name
        self._in_flight = 0
        self._infer_pool = futures.ThreadPoolExecutor(workers, thread_name_prefix=f"{name}-infer")
        self._meta_pool = futures.ThreadPoolExecutor(4, thread_name_prefix=f"{name}-meta")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self.port = 0

    @property
    def scheme(self) -> str:
        """``https`` with TLS, else ``http``."""
        return "https" if self._ssl is not None else "http"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Bind ``host:port`` (0 picks a port; ``reuse_port``: with SO_REUSEPORT, shared by
        the serving processes of one node) and serve; returns the port. ``BindError``
        (field ``http_port``) when the address cannot be bound."""
        sock = _bind(host, port, reuse_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name=f"{self._name}-loop", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(sock), self._loop).result()
        self.port = sock.getsockname()[1]
        return self.port

    async def _serve(self, sock: socket.socket) -> None:
        app = web.Application(client_max_size=self.max_body, middlewares=[self._errors])
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        self._site = web.SockSite(self._runner, sock, ssl_context=self._ssl)
        await self._site.start()

    def stop(self, grace: float) -> _Stopped:
        """Close the port, give requests in flight ``grace`` seconds, then end the loop
        thread; ``wait()`` on the result blocks until that is done."""
        if self._loop is None:
            return _Stopped(None)
        loop = self._loop
        self._loop = None

        async def drain() -> None:
            await self._site.stop()
            deadline = time.monotonic() + grace
            while self._in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if self._in_flight:
                log.warning("HTTP: %d request(s) still running after %.1fs are cut off",
                            self._in_flight, grace)
            await self._runner.cleanup()

        def finished(_: futures.Future) -> None:
            self._infer_pool.shutdown(wait=False, cancel_futures=True)
            self._meta_pool.shutdown(wait=False, cancel_futures=True)
            loop.call_soon_threadsafe(loop.stop)

        done = asyncio.run_coroutine_threadsafe(drain(), loop)
        done.add_done_callback(finished)
        return _Stopped(done)

    # -- routes ----------------------------------------------------------------------------
    def _routes(self, app: web.Application) -> None:
        get, post = app.router.add_get, app.router.add_post
        get("/v2", self._server_metadata)
        get("/v2/", self._server_metadata)
        get("/v2/health/live", self._live)
        get("/v2/health/ready", self._ready)
        get("/v2/models/stats", self._statistics)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            get(base, self._model_metadata)
            get(f"{base}/ready", self._model_ready)
            get(f"{base}/config", self._model_config)
            get(f"{base}/stats", self._statistics)
            post(f"{base}/infer", self._infer)
        # Triton's model repository extension (edge nodes: hot swap).
        post("/v2/repository/index", self._repository_index)
        post("/v2/repository/models/{model}/load", self._repository_load)
        post("/v2/repository/models/{model}/unload", self._repository_unload)

    @staticmethod
    def _model(request: web.Request) -> tuple[str, str]:
        return request.match_info.get("model", ""), request.match_info.get("version", "")

    async def _live(self, request: web.Request) -> web.Response:
        live = self.front.server_live(oip_pb2.ServerLiveRequest()).live
        return web.json_response({"live": live}, status=200 if live else 503)

    async def _ready(self, request: web.Request) -> web.Response:
        ready = self.front.server_ready(oip_pb2.ServerReadyRequest()).ready
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def _server_metadata(self, request: web.Request) -> web.Response:
        self._authorize("ServerMetadata", request)
        answer = self.front.server_metadata(oip_pb2.ServerMetadataRequest())
        return web.json_response({"name": answer.name, "version": answer.version,
                                  "extensions": list(answer.extensions)})

    async def _model_ready(self, request: web.Request) -> web.Response:
        self._authorize("ModelReady", request)
        name, version = self._model(request)
        ready = (await self._blocking(self._meta_pool, self.front.model_ready,
                                      oip_pb2.ModelReadyRequest(name=name, version=version))
                 ).ready
        return web.json_response({"name": name, "ready": ready}, status=200 if ready else 503)

    async def _model_metadata(self, request: web.Request) -> web.Response:
        self._authorize("ModelMetadata", request)
        name, version = self._model(request)
        answer = await self._blocking(self._meta_pool, self.front.model_metadata,
                                      oip_pb2.ModelMetadataRequest(name=name, version=version))
        return web.json_response(rest.metadata_dict(answer))

    async def _model_config(self, request: web.Request) -> web.Response:
        self._authorize("ModelConfig", request)
        name, version = self._model(request)
        answer = await self._blocking(self._meta_pool, self.front.model_config,
                                      oip_pb2.ModelConfigRequest(name=name, version=version))
        return web.json_response(rest.message_dict(answer.config))

    async def _statistics(self, request: web.Request) -> web.Response:
        self._authorize("ModelStatistics", request)
        name, version = self._model(request)
        answer = await self._blocking(
            self._meta_pool, self.front.model_statistics,
            oip_pb2.ModelStatisticsRequest(name=name, version=version))
        return web.json_response(rest.message_dict(answer))

    async def _repository_index(self, request: web.Request) -> web.Response:
        self._authorize("RepositoryIndex", request)
        body = await self._json_body(request)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgumentError(f"ready: must be a bool, got {ready!r}")
        answer = await self._repository("repository_index",
                                        oip_pb2.RepositoryIndexRequest(ready=ready))
        return web.json_response([{"name": m.name, "version": m.version, "state": m.state,
                                   "reason": m.reason} for m in answer.models])

    async def _repository_load(self, request: web.Request) -> web.Response:
        self._authorize("RepositoryModelLoad", request)
        body = await self._json_body(request)
        message = oip_pb2.RepositoryModelLoadRequest(model_name=request.match_info["model"])
        params = body.get("parameters", {})
        if not isinstance(params, dict):
            raise InvalidArgumentError(f"parameters: must be an object, got {params!r}")
        for key, value in params.items():
            if not isinstance(value, bool | int | str):
                raise InvalidArgumentError(f"parameters.{key}: must be a bool, int or string")
            set_param(message.parameters, key, value)
        await self._repository("repository_model_load", message)
        return web.json_response({})

    async def _repository_unload(self, request: web.Request) -> web.Response:
        self._authorize("RepositoryModelUnload", request)
        await self._json_body(request)
        await self._repository("repository_model_unload", oip_pb2.RepositoryModelUnloadRequest(
            model_name=request.match_info["model"]))
        return web.json_response({})

    async def _repository(self, method: str, message) -> Any:
        fn = getattr(self.front, method, None)
        if fn is None:
            raise web.HTTPNotImplemented(text=json.dumps(
                {"error": f"{self.process}: the model repository extension is served by "
                          "edge nodes"}), content_type=JSON)
        return await self._blocking(self._meta_pool, fn, message)

    @staticmethod
    async def _json_body(request: web.Request) -> dict:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise InvalidArgumentError(f"body: not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidArgumentError("body: must be a JSON object")
        return body

    async def _infer(self, request: web.Request) -> web.Response:
        self._authorize("ModelInfer", request)
        if self._in_flight >= self.max_in_flight:
            raise ResourceExhaustedError(f"{self.max_in_flight} HTTP inference requests are "
                                         "in flight; retry later or elsewhere")
        self._in_flight += 1
        try:
            name, version = self._model(request)
            header, binary = rest.split_body(await request.read(),
                                             request.headers.get(rest.HEADER_LENGTH))
            message, binary_outputs = rest.infer_request(header, binary, name, version)
            answer = await self._blocking(self._infer_pool, self.front.model_infer, message,
                                          rest.timeout_of(message))
            body, header_length = rest.infer_response(answer, binary_outputs)
        finally:
            self._in_flight -= 1
        if header_length is None:
            return web.Response(body=body, content_type=JSON)
        return web.Response(body=body, content_type="application/octet-stream",
                            headers={rest.HEADER_LENGTH: str(header_length)})

    # -- plumbing --------------------------------------------------------------------------
    async def _blocking(self, pool: futures.Executor, fn: Callable[..., Any],
                        *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def _authorize(self, rpc: str, request: web.Request) -> None:
        if self.authenticator is not None:
            self.authenticator.check(f"/{SERVICE}/{rpc}", request.headers.items())

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body: larger than the {self.max_body} bytes this server "
                               "accepts (--max-message-bytes)")
        except web.HTTPException as exc:  # no such route, wrong method
            return _error(exc.status, f"{request.method} {request.path}: {exc.reason}")
        except Exception as exc:  # noqa: BLE001 - the status table decides
            status, message = http_status_for(exc, self.process)
            if status == 500:
                log.exception("HTTP %s %s failed", request.method, request.path)
            response = _error(status, message)
            if isinstance(exc, NotAuthenticatedError):
                response.headers["WWW-Authenticate"] = "Bearer"
            return response


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening-ready socket bound to ``host:port``; ``BindError`` when it cannot be."""
    try:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise BindError("http_port", f"{host}:{port}", str(exc)) from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BindError("http_port", f"{host}:{port}", exc.strerror or str(exc)) from None
    return sock
