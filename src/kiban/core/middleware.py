"""Pure ASGI middleware: request id, and one structured log line per request.

Written against ASGI directly (not BaseHTTPMiddleware) because it sits on every request's hot path
and must not buffer streamed responses.
"""

from __future__ import annotations

import re
import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiban.core import ids
from kiban.core.context import request_id_var
from kiban.core.metrics import HTTP_LATENCY, HTTP_REQUESTS

log = structlog.get_logger("kiban.access")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Labelled children, cached: ``.labels()`` costs a lock and a dict build on every call.
_http_counters: dict[tuple[str, str, int], Any] = {}
_http_histograms: dict[tuple[str, str], Any] = {}


def observe_http(method: str, route: str | None, status: int, seconds: float) -> None:
    """Count one HTTP request and its latency, by route template (never the raw path)."""
    method = method if method in _METHODS else "OTHER"
    route = route or ("unmatched" if status == 404 else "other")  # 404s, mounts
    counter = _http_counters.get((method, route, status))
    if counter is None:
        counter = _http_counters[(method, route, status)] = HTTP_REQUESTS.labels(
            method, route, str(status)
        )
    histogram = _http_histograms.get((method, route))
    if histogram is None:
        histogram = _http_histograms[(method, route)] = HTTP_LATENCY.labels(method, route)
    counter.inc()
    histogram.observe(seconds)


class RequestContextMiddleware:
    """Accept or generate ``X-Request-ID``, echo it, bind it to logs, and log the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _VALID_REQUEST_ID.match(candidate):
                    request_id = candidate
                break
        if request_id is None:
            request_id = ids.request_id()
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            state = scope.get("state", {})
            route = getattr(scope.get("route"), "path", None)
            elapsed = time.perf_counter() - started
            observe_http(scope["method"], route, status, elapsed)
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                user_id=state.get("user_id"),
                **state.get("log_fields", {}),
            )
            request_id_var.reset(token)
