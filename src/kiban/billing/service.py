"""Billing use cases: Checkout, the Customer Portal, the subscription view (webhooks: inbox)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from kiban.billing import exceptions as exc
from kiban.billing import repository as repo
from kiban.billing import state
from kiban.billing.plans import Plan, PlanCatalog
from kiban.billing.stripe_client import StripeClient
from kiban.core import clock
from kiban.models import User
from kiban.models.billing import BillingSubscription, SubscriptionState
from kiban.settings import Settings


def require_stripe(stripe: StripeClient | None) -> StripeClient:
    """The configured Stripe client, or 503 billing_not_configured."""
    if stripe is None:
        raise exc.BillingNotConfigured()
    return stripe


async def ensure_customer(session: AsyncSession, stripe: StripeClient, user: User) -> str:
    """The user's Stripe customer id, created in Stripe and remembered on first use."""
    existing = await repo.customer_of_user(session, user.id)
    if existing is not None:
        return existing.stripe_customer_id
    customer_id = await stripe.create_customer(email=user.email, user_id=str(user.id))
    return await repo.link_customer(session, user.id, customer_id)


async def start_checkout(
    session: AsyncSession,
    stripe: StripeClient,
    catalog: PlanCatalog,
    settings: Settings,
    user: User,
    plan_name: str,
) -> tuple[str, str]:
    """A Checkout session for the plan's price; returns (session id, url)."""
    plan = catalog.plans.get(plan_name)
    if plan is None:
        raise exc.UnknownPlan(
            f"There is no plan named {plan_name!r}.",
            extra={"plans": sorted(catalog.plans)},
        )
    if not plan.stripe_price_ids:
        raise exc.PlanNotPurchasable(f"The plan {plan_name!r} has no Stripe price.")
    if await state.paid_subscription(session, user.id, clock.now(), grace(settings)) is not None:
        raise exc.AlreadySubscribed()
    customer_id = await ensure_customer(session, stripe, user)
    base = settings.base_url.rstrip("/")
    return await stripe.create_checkout_session(
        customer_id=customer_id,
        price_id=plan.stripe_price_ids[0],
        user_id=str(user.id),
        plan=plan.name,
        success_url=settings.billing_success_url
        or f"{base}/billing/success?session_id={{CHECKOUT_SESSION_ID}}",
        cancel_url=settings.billing_cancel_url or f"{base}/billing/cancel",
    )


async def open_portal(
    session: AsyncSession, stripe: StripeClient, settings: Settings, user: User
) -> str:
    """A Customer Portal url for the user's Stripe customer."""
    customer = await repo.customer_of_user(session, user.id)
    if customer is None:
        raise exc.NoBillingAccount()
    return await stripe.create_portal_session(
        customer_id=customer.stripe_customer_id,
        return_url=settings.billing_portal_return_url or settings.base_url,
    )


@dataclass(frozen=True)
class SubscriptionView:
    plan: str
    status: SubscriptionState
    current_period_end: datetime | None
    cancel_at_period_end: bool


def grace(settings: Settings) -> timedelta:
    """The PAST_DUE grace period from the settings."""
    return state.grace_period(settings.billing_past_due_grace_days)


def plan_of(sub: BillingSubscription, catalog: PlanCatalog) -> Plan | None:
    """The plan a subscription's price buys (None: a price the plans file does not list)."""
    return catalog.for_price(sub.price_id) if sub.price_id else None


async def subscription_view(
    session: AsyncSession, catalog: PlanCatalog, settings: Settings, user: User
) -> SubscriptionView:
    """What the user's subscription means right now."""
    from kiban.billing.entitlements import resolve_entitlement

    now = clock.now()
    entitlement = await resolve_entitlement(
        session, user, now, catalog=catalog, grace=grace(settings)
    )
    sub = await state.paid_subscription(session, user.id, now, grace(settings))
    sub = sub or await state.latest_subscription(session, user.id)
    if sub is None:
        return SubscriptionView(entitlement.plan.name, SubscriptionState.FREE, None, False)
    return SubscriptionView(
        plan=entitlement.plan.name,
        status=state.state_of(sub, now, grace(settings)),
        current_period_end=sub.current_period_end,
        cancel_at_period_end=sub.cancel_at_period_end,
    )
