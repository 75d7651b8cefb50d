"""Billing over HTTP: Checkout, the Customer Portal, the subscription, Stripe's webhook."""

from __future__ import annotations

from fastapi import APIRouter, Request

from kiban.auth import CurrentUser
from kiban.billing import inbox, service
from kiban.billing.dependencies import PlanCatalogDep, StripeDep
from kiban.billing.schemas import (
    CheckoutIn,
    CheckoutOut,
    PortalOut,
    ReturnOut,
    SubscriptionOut,
    WebhookOut,
)
from kiban.core.db import SessionDep
from kiban.core.dependencies import SettingsDep

router = APIRouter(prefix="/billing", tags=["billing"])


@router.post("/checkout", response_model=CheckoutOut)
async def checkout(
    body: CheckoutIn,
    user: CurrentUser,
    session: SessionDep,
    stripe: StripeDep,
    catalog: PlanCatalogDep,
    settings: SettingsDep,
) -> CheckoutOut:
    """Start a Stripe Checkout session for a plan; send the user to the returned url."""
    session_id, url = await service.start_checkout(
        session, stripe, catalog, settings, user, body.plan
    )
    return CheckoutOut(url=url, session_id=session_id)


@router.post("/portal", response_model=PortalOut)
async def portal(
    user: CurrentUser, session: SessionDep, stripe: StripeDep, settings: SettingsDep
) -> PortalOut:
    """Open the Stripe Customer Portal (change card, switch plan, cancel)."""
    return PortalOut(url=await service.open_portal(session, stripe, settings, user))


@router.get("/subscription", response_model=SubscriptionOut)
async def subscription(
    user: CurrentUser, session: SessionDep, catalog: PlanCatalogDep, settings: SettingsDep
) -> SubscriptionOut:
    """The caller's plan and subscription state right now."""
    view = await service.subscription_view(session, catalog, settings, user)
    return SubscriptionOut(
        plan=view.plan,
        status=view.status,
        current_period_end=view.current_period_end,
        cancel_at_period_end=view.cancel_at_period_end,
    )


@router.get("/success", response_model=ReturnOut)
async def checkout_success(session_id: str | None = None) -> ReturnOut:
    """Where Checkout returns by default (set KIBAN_BILLING_SUCCESS_URL to your own page)."""
    return ReturnOut(
        status="success",
        message="Payment received. The plan changes as soon as Stripe confirms the subscription "
        "(GET /billing/subscription).",
        session_id=session_id,
    )


@router.get("/cancel", response_model=ReturnOut)
async def checkout_cancel() -> ReturnOut:
    """Where Checkout returns when the user gives up (KIBAN_BILLING_CANCEL_URL overrides it)."""
    return ReturnOut(status="canceled", message="Checkout was canceled; nothing was charged.")


@router.post("/webhook", response_model=WebhookOut)
async def webhook(request: Request, settings: SettingsDep) -> WebhookOut:
    """Receive a Stripe event: verified, recorded once, applied once (duplicates get 200)."""
    payload = await request.body()
    receipt = await inbox.receive_webhook(
        request.app.state.sessionmaker,
        settings,
        payload,
        request.headers.get("stripe-signature"),
        service.grace(settings),
    )
    request.scope.setdefault("state", {}).setdefault("log_fields", {}).update(
        stripe_event=receipt.event_id, stripe_event_type=receipt.type
    )
    return WebhookOut(
        event_id=receipt.event_id, duplicate=receipt.duplicate, outcome=receipt.outcome
    )
