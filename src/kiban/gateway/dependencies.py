"""Typed dependencies of the gateway routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from kiban.gateway.service import Gateway


async def get_gateway(request: Request) -> Gateway:
    # async: a plain ``def`` dependency would cost a thread-pool hop on every request.
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
