"""The gateway's hot routes, called without FastAPI's per-request dependency solving.

An AI call's endpoint needs the same two things every time: who is calling and the app's
``Gateway``. FastAPI would solve that dependency tree (the bearer scheme, the principal, the
settings, keyring, sessionmaker and key cache under it, the gateway) on every request: about a
sixth of the CPU a cached-key chat completion costs. An endpoint of exactly the shape
``(request: Request, principal: GatewayPrincipal, gateway: GatewayDep)`` is instead called with
``authenticate_gateway(request)`` and ``app.state.gateway`` directly: the same functions the
declared dependencies run, so the OpenAPI schema (the bearer scheme) and the behaviour are the
ones declared. Any other endpoint on such a router goes through FastAPI as usual.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from kiban.auth import authenticate_gateway, get_gateway_principal
from kiban.gateway.dependencies import get_gateway

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class GatewayRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        if not self._is_gateway_call():
            return super().get_route_handler()
        endpoint = self.endpoint

        async def call(request: Request) -> Response:
            principal = await authenticate_gateway(request)
            response: Response = await endpoint(request, principal, request.app.state.gateway)
            return response

        return call

    def _is_gateway_call(self) -> bool:
        """True for an endpoint declaring exactly a request, the gateway principal and the
        gateway, in that order, and nothing else."""
        d = self.dependant
        return (
            list(inspect.signature(self.endpoint).parameters) == ["request", "principal", "gateway"]
            and d.request_param_name == "request"
            and [(x.name, x.call) for x in d.dependencies]
            == [("principal", get_gateway_principal), ("gateway", get_gateway)]
        )
