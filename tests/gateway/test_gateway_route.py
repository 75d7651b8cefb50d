"""The gateway's hot routes skip FastAPI's dependency solving, and still behave as declared."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import BaseRoute

from kiban.gateway.route import GatewayRoute

DIRECT = {
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/ai/test"),
    ("POST", "/ai/stream"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
}


def _routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included routers
        yield from _routes(included.routes) if included is not None else [route]


def test_exactly_the_gateway_calls_are_called_directly(app: FastAPI) -> None:
    direct = set()
    for route in _routes(app.routes):
        if isinstance(route, GatewayRoute) and route._gateway_call() is not None:
            direct |= {(method, route.path) for method in route.methods}
    assert direct == DIRECT  # /ai/logs and /v1/models declare more: FastAPI solves theirs


def test_the_schema_still_shows_the_bearer_scheme(app: FastAPI) -> None:
    operation = app.openapi()["paths"]["/v1/chat/completions"]["post"]
    assert operation["security"] == [{"OAuth2PasswordBearer": []}]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/ai/test"])
async def test_a_direct_route_refuses_what_the_dependency_refuses(
    client: httpx.AsyncClient, path: str
) -> None:
    missing = await client.post(path, json={})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_credentials"
    malformed = await client.post(path, json={}, headers={"Authorization": "Basic abc"})
    assert malformed.status_code == 401
    assert malformed.json()["error"]["code"] == "malformed_token"
    unknown = await client.post(path, json={}, headers={"Authorization": "Bearer kb_nope"})
    assert unknown.status_code == 401
