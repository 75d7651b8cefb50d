"""The gateway's hot routes, called without FastAPI's per-request dependency solving.

An AI call's endpoint needs the same two things every time: who is calling and the app's
``Gateway``. FastAPI would solve that dependency tree (the bearer scheme, the principal, the
settings, keyring, sessionmaker and key cache under it, the gateway) on every request: about a
sixth of the CPU a cached-key chat completion costs. An endpoint of exactly the shape
``(request: Request, principal: GatewayPrincipal, gateway: GatewayDep)`` (or
``GatewayKeyPrincipal``, which also reads ``x-api-key``) is instead called with
``authenticate_gateway(request)`` and ``app.state.gateway`` directly: the same functions the
declared dependencies run, so the OpenAPI schema (the bearer scheme) and the behaviour are the
ones declared. Any other endpoint on such a router goes through FastAPI as usual.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from kiban.auth import (
    Principal,
    authenticate_gateway,
    get_gateway_key_principal,
    get_gateway_principal,
)
from kiban.gateway.dependencies import get_gateway

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class GatewayRoute(APIRoute):
    """A route of the gateway's routers; its gateway calls skip FastAPI's dependency solving."""

    def get_route_handler(self) -> Handler:
        authenticate = self._gateway_call()
        if authenticate is None:
            return super().get_route_handler()
        endpoint = self.endpoint

        async def call(request: Request) -> Response:
            principal = await authenticate(request)
            response: Response = await endpoint(request, principal, request.app.state.gateway)
            return response

        return call

    def _gateway_call(self) -> Callable[[Request], Awaitable[Principal]] | None:
        """How to authenticate an endpoint declaring exactly a request, a gateway principal
        (``GatewayPrincipal`` or ``GatewayKeyPrincipal``) and the gateway, in that order, and
        nothing else; None for any other endpoint."""
        d = self.dependant
        if list(inspect.signature(self.endpoint).parameters) != ["request", "principal", "gateway"]:
            return None
        if d.request_param_name != "request" or len(d.dependencies) != 2:
            return None
        principal, gateway = d.dependencies
        if (principal.name, gateway.name, gateway.call) != ("principal", "gateway", get_gateway):
            return None
        return _AUTHENTICATE.get(principal.call)  # type: ignore[arg-type]


_AUTHENTICATE: dict[Callable[..., Any], Callable[[Request], Awaitable[Principal]]] = {
    get_gateway_principal: authenticate_gateway,
    get_gateway_key_principal: functools.partial(authenticate_gateway, x_api_key=True),
}
