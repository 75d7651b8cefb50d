"""Typed dependencies: ``StripeDep`` (503 when billing is off) and ``PlanCatalogDep``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from kiban.billing.plans import PlanCatalog
from kiban.billing.service import require_stripe
from kiban.billing.stripe_client import StripeClient


async def get_stripe(request: Request) -> StripeClient:
    stripe: StripeClient | None = getattr(request.app.state, "stripe", None)
    return require_stripe(stripe)


async def get_catalog(request: Request) -> PlanCatalog:
    """The catalog the app loaded and checked at start-up (plans file and KIBAN_STRIPE_PRICES)."""
    catalog: PlanCatalog = request.app.state.plans
    return catalog


StripeDep = Annotated[StripeClient, Depends(get_stripe)]
PlanCatalogDep = Annotated[PlanCatalog, Depends(get_catalog)]
