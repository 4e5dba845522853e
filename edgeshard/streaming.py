"""Triton's ``ModelStreamInfer``: a bidirectional stream of inference requests, for both
daemons.

A client (``tritonclient.grpc``'s ``start_stream`` / ``async_stream_infer``,
``perf_analyzer --streaming``) keeps one stream open and writes requests into it; each
request is answered with one ``ModelStreamInferResponse``: ``infer_response`` on
success, ``error_message`` on failure (``"CODE: message (request id 'ID')"``, with
``infer_response`` carrying only the request's ``model_name``, ``model_version`` and
``id``, so a client can tell which request failed; tritonclient passes a stream callback
the message alone). A failed request does not end the stream. As in Triton, requests of one
stream run concurrently (up to ``max_in_flight`` at a time, which also bounds how far a
client may write ahead: gRPC flow control holds the rest) and **responses come in the
order they finish**, which may differ from the order of the requests: match them by
``id``. The stream ends, after the last answer, when the client closes its side.

``answer`` is the one place a request becomes a stream response; ``serve_stream`` runs a
stream on threads (a ``grpc.server``: one handler thread, one reader thread, and the
pool's threads for the requests), ``serve_stream_async`` on an event loop (a
``grpc.aio`` server: no thread held while waiting; requests run through
``run_blocking``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from edgeshard.rpc import status_for
from protos import oip_pb2

DEFAULT_MAX_IN_FLIGHT = 16
_POLL_S = 0.5  # how often a waiting stream looks whether its client is still there

Infer = Callable[[oip_pb2.ModelInferRequest], oip_pb2.ModelInferResponse]


def answer(request: oip_pb2.ModelInferRequest, infer: Infer, process: str,
           log: logging.Logger) -> oip_pb2.ModelStreamInferResponse:
    """The stream response to ``request``: ``infer(request)`` as ``infer_response``, or
    the error's message (as the unary call would give it; unexpected errors are logged
    with their traceback and answered generically) with the request's name, version and
    id."""
    try:
        return oip_pb2.ModelStreamInferResponse(infer_response=infer(request))
    except Exception as exc:  # noqa: BLE001 - every failure is answered, the stream goes on
        code, message = status_for(exc, process)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("ModelStreamInfer: request %r failed", request.id)
        # tritonclient hands a stream callback the error text alone: it names the request
        which = f" (request id {request.id!r})" if request.id else ""
        return oip_pb2.ModelStreamInferResponse(
            error_message=f"{code.name}: {message}{which}",
            infer_response=oip_pb2.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version,
                id=request.id))


def serve_stream(requests: Iterator[oip_pb2.ModelInferRequest], infer: Infer,
                 pool: futures.Executor, active: Callable[[], bool], process: str,
                 log: logging.Logger, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 ) -> Iterator[oip_pb2.ModelStreamInferResponse]:
    """Answer the requests of one stream on threads; yields the responses as they finish.

    A reader thread takes requests from ``requests`` (gRPC's request iterator) while fewer
    than ``max_in_flight`` are running, and runs each on ``pool``. Ends when the client has
    closed its side and every request is answered, or when ``active()`` turns false (the
    client went away: what is still running finishes, unanswered).
    """
    done: queue.SimpleQueue = queue.SimpleQueue()
    slots = threading.BoundedSemaphore(max_in_flight)
    read_all = object()

    def run(request: oip_pb2.ModelInferRequest) -> None:
        try:
            done.put(answer(request, infer, process, log))
        finally:
            slots.release()

    def read() -> None:
        count = 0
        try:
            for request in requests:
                while not slots.acquire(timeout=_POLL_S):
                    if not active():
                        return
                pool.submit(run, request)
                count += 1
        except grpc.RpcError:
            pass  # the client cancelled: its stream is gone
        except RuntimeError:  # the pool is shut down: the daemon is stopping
            log.info("ModelStreamInfer: not reading more requests, the server is stopping")
        finally:
            done.put((read_all, count))

    reader = threading.Thread(target=read, name="stream-reader", daemon=True)
    reader.start()
    answered, total = 0, None
    while total is None or answered < total:
        try:
            item = done.get(timeout=_POLL_S)
        except queue.Empty:
            if not active():
                return
            continue
        if isinstance(item, tuple) and item[0] is read_all:
            total = item[1]
            continue
        answered += 1
        yield item


async def serve_stream_async(requests: AsyncIterator[oip_pb2.ModelInferRequest],
                             infer: Infer,
                             run_blocking: Callable[..., Awaitable[Any]], process: str,
                             log: logging.Logger,
                             max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                             ) -> AsyncIterator[oip_pb2.ModelStreamInferResponse]:
    """``serve_stream`` for a ``grpc.aio`` server: each request runs through
    ``run_blocking`` (at most ``max_in_flight`` at a time); yields the responses as they
    finish; ends once the client has closed its side and every request is answered."""
    done: asyncio.Queue = asyncio.Queue()
    slots = asyncio.Semaphore(max_in_flight)
    read_all = object()

    async def run(request: oip_pb2.ModelInferRequest) -> None:
        try:
            await done.put(await run_blocking(answer, request, infer, process, log))
        finally:
            slots.release()

    async def read() -> None:
        count = 0
        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.ensure_future(run(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                count += 1
        except grpc.RpcError:
            pass  # the client cancelled: its stream is gone
        finally:
            await done.put((read_all, count))

    tasks: set[asyncio.Future] = set()
    reader = asyncio.ensure_future(read())
    answered, total = 0, None
    try:
        while total is None or answered < total:
            item = await done.get()
            if isinstance(item, tuple) and item[0] is read_all:
                total = item[1]
                continue
            answered += 1
            yield item
    finally:
        reader.cancel()
        for task in tasks:
            task.cancel()
