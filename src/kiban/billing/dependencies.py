"""Typed dependencies: ``StripeGatewayDep`` (503 when billing is off) and ``PlanCatalogDep``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from kiban.billing.plans import PlanCatalog
from kiban.billing.service import require_gateway
from kiban.billing.stripe_gateway import StripeGateway


async def get_gateway(request: Request) -> StripeGateway:
    gateway: StripeGateway | None = getattr(request.app.state, "stripe", None)
    return require_gateway(gateway)


async def get_catalog(request: Request) -> PlanCatalog:
    """The catalog the app loaded and checked at start-up (plans file and KIBAN_STRIPE_PRICES)."""
    catalog: PlanCatalog = request.app.state.plans
    return catalog


StripeGatewayDep = Annotated[StripeGateway, Depends(get_gateway)]
PlanCatalogDep = Annotated[PlanCatalog, Depends(get_catalog)]
