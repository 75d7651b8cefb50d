"""Request bodies over a size limit are refused before anything reads them (413).

Starlette parses a multipart upload whole (spooling it to disk) before a route sees its files,
and reads any body whole for JSON: a route's own size check comes too late to protect the disk
or the memory. This pure ASGI middleware checks ``Content-Length`` before the app runs, and
counts the bytes of a body sent without one (chunked) as the app reads them, stopping at the
limit. Either way the client gets **413 `request_too_large`** with the limit, whatever the app
was doing with the body when it stopped.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiban.core.errors import AppError, error_response


class _TooLarge(AppError):
    """Raised from ``receive`` when a body without Content-Length passes the limit (the app may
    turn it into its own error response; the middleware answers 413 instead)."""

    status_code = 413
    code = "request_too_large"


class BodyLimitMiddleware:
    """``limits`` by exact path; every other path gets ``default`` bytes."""

    def __init__(self, app: ASGIApp, *, default: int, limits: Mapping[str, int]) -> None:
        self.app = app
        self.default = default
        self.limits = dict(limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        limit = self.limits.get(path, self.default)
        declared: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = True
        # (At most 18 digits: int() of a very long string is itself slow.)
        if declared is not None and (
            not declared.isdigit() or len(declared) > 18 or int(declared) > limit
        ):
            await _refuse(scope, receive, send, limit)
            return
        if declared is not None and not chunked:
            # The server delivers exactly the declared length: nothing to count. With both
            # headers, some servers (h11) go by the chunks: count them.
            await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send, limit)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        exceeded = started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if exceeded:  # whatever the app answered to a body cut short: the 413
                    await _refuse(scope, receive, send, limit)
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            if not started:
                await _refuse(scope, receive, send, limit)


async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = error_response(
        413,
        {
            "code": "request_too_large",
            "message": f"The request body is larger than {limit} bytes.",
            "hint": "Send less per request (split an upload into several).",
            "limit_bytes": limit,
        },
        {"Connection": "close"},
    )
    await response(scope, receive, send)
