"""Errors that carry their HTTP status and a stable machine-readable code.

Every error response has one JSON shape::

    {"error": {"code": "...", "message": "...", "hint": "...", "request_id": "..."}}

Hierarchy (domain packages subclass these in their own ``exceptions.py``)::

    AppError                       500 internal_error
    ├── BadRequest                 400 bad_request
    ├── Unauthorized               401 (adds RFC 6750 WWW-Authenticate)
    ├── Forbidden                  403 forbidden
    ├── NotFound                   404 not_found
    ├── Conflict                   409 conflict
    ├── PayloadTooLarge            413 payload_too_large
    ├── UnsupportedMediaType       415 unsupported_media_type
    ├── Unprocessable              422 unprocessable
    ├── TooManyRequests            429 too_many_requests (Retry-After)
    ├── ClientDisconnected         499 client_disconnected (no one reads it: the client left)
    └── ServiceUnavailable         503 service_unavailable
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from kiban.core.context import current_request_id

log = structlog.get_logger("kiban.errors")


class AppError(Exception):
    """Base for every error the API reports on purpose."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "Internal server error."
    default_hint: ClassVar[str | None] = None

    def __init__(
        self,
        message: str | None = None,
        *,
        hint: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.hint = hint if hint is not None else self.default_hint
        self.error_code = code or self.code
        self.headers = headers or {}
        self.extra = extra or {}
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.error_code, "message": self.message}
        if self.hint:
            error["hint"] = self.hint
        error.update(self.extra)
        return error


class BadRequest(AppError):
    status_code = 400
    code = "bad_request"
    default_message = "The request is not valid."


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"
    default_message = "Authentication is required."


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"
    default_message = "You are not allowed to do this."


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    default_message = "Not found."


class Conflict(AppError):
    status_code = 409
    code = "conflict"
    default_message = "The request conflicts with the current state."


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"
    default_message = "The request body is too large."


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_media_type"
    default_message = "This media type is not supported."


class Unprocessable(AppError):
    status_code = 422
    code = "unprocessable"
    default_message = "The request could not be processed."


class TooManyRequests(AppError):
    status_code = 429
    code = "too_many_requests"
    default_message = "Too many requests."


class ClientDisconnected(AppError):
    """The client closed the connection before its request was read: not a server error."""

    status_code = 499  # nginx's "client closed request"
    code = "client_disconnected"
    default_message = "The client closed the connection before the request was read."


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"
    default_message = "The service is not available right now."


def error_response(
    status_code: int, error: dict[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    """Render the one error shape, with the request id filled in."""
    error.setdefault("request_id", current_request_id())
    return Response(
        orjson.dumps({"error": error}),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)] or [str(p) for p in loc]
    return ".".join(parts)


async def _app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    if exc.status_code >= 500:
        log.error("app_error", code=exc.error_code, message=exc.message)
    return error_response(exc.status_code, exc.body(), exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    fields = [
        {"field": _location(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type")}
        for e in exc.errors()
    ]
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    return error_response(
        422,
        {"code": "validation_error", "message": f"Invalid request: {summary}", "fields": fields},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else "HTTP error."
    if exc.status_code == 404 and message == "Not Found":
        message = f"No route for {request.method} {request.url.path}."
    return error_response(exc.status_code, {"code": code, "message": message}, exc.headers)


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    # Reading the body failed because the client left: a line, not a traceback, and no 500.
    log.info("client_disconnected", path=request.url.path)
    return await _app_error(request, ClientDisconnected())


async def _unhandled(request: Request, exc: Exception) -> Response:
    # Starlette answers this one outside our middleware, whose request id is no longer current:
    # take it from the scope, so that the log line, the body and the header still carry it.
    request_id = request.scope.get("state", {}).get("request_id")
    log.exception("unhandled_error", path=request.url.path, request_id=request_id)
    return error_response(
        500,
        {"code": "internal_error", "message": "Internal server error.", "request_id": request_id},
        {"X-Request-ID": request_id} if request_id else None,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can raise to the one JSON shape."""
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    app.add_exception_handler(Exception, _unhandled)
