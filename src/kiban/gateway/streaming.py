"""Server-sent events for a streamed call, with the guarantees a ledger needs.

``CallStream`` is an ASGI response that owns the call's finish: it forwards the provider's chunks,
sends a keep-alive comment when nothing was sent for a while, watches for the client going away
(then cancels the upstream read and records ``cancelled`` with the tokens so far), turns an
upstream failure mid-stream into a final error event, and finishes the call exactly once, in a
``finally`` that runs even when the response task itself is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from kiban.core.errors import AppError
from kiban.gateway.call import Call, Outcome
from kiban.gateway.providers.base import CompletionStream, StreamChunk
from kiban.models import UsageStatus

log = structlog.get_logger("kiban.gateway.stream")

KEEPALIVE = b": keep-alive\n\n"


class StreamFormat:
    """How one kind of stream writes its events (``/ai/stream`` and ``/v1`` differ)."""

    def begin(self, stream: CompletionStream) -> None:
        """The stream it writes, once opened (a format that reports its usage as it goes)."""

    def chunk(self, chunk: StreamChunk) -> bytes | None:
        raise NotImplementedError

    def done(self, call: Call, stream: CompletionStream, outcome: Outcome) -> bytes:
        raise NotImplementedError

    def error(self, call: Call, error: AppError) -> bytes:
        raise NotImplementedError


class CallStream(Response):
    """The streamed response of one call (a Starlette response, so FastAPI passes it through)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        call: Call,
        stream: CompletionStream,
        fmt: StreamFormat,
        *,
        keepalive_seconds: float,
        headers: dict[str, str] | None = None,
        success_status: str = UsageStatus.OK,
    ) -> None:
        self.call = call
        self.stream = stream
        self.fmt = fmt
        fmt.begin(stream)
        self.keepalive_seconds = keepalive_seconds
        self.success_status = success_status
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})}
        )
        call.handed_off = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        lock = asyncio.Lock()
        last_sent = loop.time()
        status: str = self.success_status
        failure: AppError | None = None

        async def emit(data: bytes) -> None:
            nonlocal last_sent
            async with lock:
                await send({"type": "http.response.body", "body": data, "more_body": True})
                last_sent = loop.time()

        async def produce() -> None:
            first = True
            async for chunk in self.stream:
                if first and chunk.text:
                    self.call.first_token()
                    first = False
                data = self.fmt.chunk(chunk)
                if data:
                    await emit(data)

        async def keepalive() -> None:
            while True:
                idle = loop.time() - last_sent
                if idle < self.keepalive_seconds:
                    await asyncio.sleep(self.keepalive_seconds - idle)
                    continue
                await emit(KEEPALIVE)

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        tasks: list[asyncio.Future[None]] = []
        try:
            # The start goes out before any task can write a body chunk or a keep-alive.
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            producer = asyncio.ensure_future(produce())
            watcher = asyncio.ensure_future(disconnected())
            tasks = [producer, watcher, asyncio.ensure_future(keepalive())]
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not producer.done():
                status = UsageStatus.CANCELLED  # the client went away first
            else:
                exc = producer.exception()
                if isinstance(exc, AppError):
                    status, failure = UsageStatus.ERROR, exc
                elif isinstance(exc, OSError):
                    status = UsageStatus.CANCELLED  # the server could not write to the client
                elif exc is not None:
                    log.error("stream_failed", error=repr(exc))
                    status, failure = UsageStatus.ERROR, AppError()
        except OSError:
            status = UsageStatus.CANCELLED  # the client was gone before the first byte
        except asyncio.CancelledError:
            status = UsageStatus.CANCELLED
            raise
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(BaseException):
                await self.stream.aclose()  # releases the upstream connection if still open
            code = (
                failure.error_code
                if failure
                else ("client_disconnected" if status == UsageStatus.CANCELLED else None)
            )
            outcome = await self.call.finish(
                status,
                usage=self.stream.usage,
                response_text=self.stream.text,
                error_code=code,
                served=self.stream.model,
            )
            if status != UsageStatus.CANCELLED:
                tail = (
                    self.fmt.error(self.call, failure)
                    if failure
                    else self.fmt.done(self.call, self.stream, outcome)
                )
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.body", "body": tail, "more_body": False})
        if self.background is not None:
            await self.background()


def sse(event: str, data: Any, dumps: Callable[[Any], bytes]) -> bytes:
    """One named server-sent event."""
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"
