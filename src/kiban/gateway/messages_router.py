"""``/v1/messages``: Anthropic's Messages API for the ``anthropic`` SDKs and Claude Code.

Authenticated by kiban's credentials in ``x-api-key`` (what those clients send) or as a bearer;
every error answers in Anthropic's shape (``{"type": "error", "error": {"type", "message"}}``),
with kiban's ``code`` kept beside them, and the request id in a ``request-id`` header as
Anthropic sends it. ``anthropic-version`` is accepted (any dated version;
none is fine too) and not echoed, as Anthropic does not echo it; ``anthropic-beta`` is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, Request, Response

from kiban.auth import GatewayKeyPrincipal
from kiban.core.context import current_request_id
from kiban.core.errors import AppError
from kiban.gateway import flow
from kiban.gateway.dependencies import GatewayDep
from kiban.gateway.exceptions import InvalidRequest
from kiban.gateway.route import GatewayRoute
from kiban.gateway.surfaces.anthropic_messages import MESSAGES, error_body, parse_messages
from kiban.gateway.tokenizer import count_messages, count_request_extras

log = structlog.get_logger("kiban.gateway")
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class AnthropicErrorRoute(GatewayRoute):
    """Errors on ``/v1/messages`` in Anthropic's shape, so its SDKs raise the right exception."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except AppError as exc:
                if exc.status_code >= 500:
                    log.error("app_error", code=exc.error_code, message=exc.message)
                response = Response(
                    orjson.dumps(error_body(exc, _request_id(request))),
                    status_code=exc.status_code,
                    headers=exc.headers,
                    media_type="application/json",
                )
            # Where Anthropic's SDKs read it (``message._request_id``, their error messages).
            response.headers["request-id"] = _request_id(request)
            return response

        return route


def _request_id(request: Request) -> str:
    return current_request_id() or request.scope.get("state", {}).get("request_id", "")


router = APIRouter(prefix="/v1", tags=["anthropic-compatible"], route_class=AnthropicErrorRoute)


def check_version(request: Request) -> None:
    """An ``anthropic-version`` header, when sent, names a dated API version."""
    version = request.headers.get("anthropic-version")
    if version is not None and not _VERSION.match(version.strip()):
        raise InvalidRequest(
            f"anthropic-version: {version!r} is not a valid version (e.g. 2023-06-01).",
            param="anthropic-version",
        )


@router.post(
    "/messages",
    response_class=Response,
    responses={200: {"content": {"application/json": {}, "text/event-stream": {}}}},
)
async def messages(
    request: Request, principal: GatewayKeyPrincipal, gateway: GatewayDep
) -> Response:
    """Anthropic-compatible message, streamed or not, metered like every AI request."""
    check_version(request)
    return await flow.serve(MESSAGES, request, principal, gateway)


@router.post("/messages/count_tokens", response_class=Response)
async def count_tokens(
    request: Request, principal: GatewayKeyPrincipal, gateway: GatewayDep
) -> Response:
    """The prompt's tokens as kiban counts them for its quota (an estimate; not metered)."""
    check_version(request)
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
    if isinstance(data, dict):
        data.setdefault("max_tokens", 1)  # counting needs no completion limit
    intent = parse_messages(orjson.dumps(data))
    spec = gateway.catalog.resolve(intent.model)
    tokens = count_messages(intent.body["messages"], spec.encoding) + count_request_extras(
        intent.body, spec.encoding
    )
    return Response(orjson.dumps({"input_tokens": tokens}), media_type="application/json")
