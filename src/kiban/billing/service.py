"""Billing use cases: Checkout, the Customer Portal, the subscription view, webhook receipt."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kiban.billing import exceptions as exc
from kiban.billing import repository as repo
from kiban.billing import state
from kiban.billing.handlers import apply_event, subscription_id_of
from kiban.billing.plans import Plan, PlanCatalog
from kiban.billing.stripe_gateway import StripeGateway
from kiban.billing.webhooks import StripeEvent, parse_event, verify_signature
from kiban.core import clock
from kiban.core.db import session_scope
from kiban.models import User
from kiban.models.billing import BillingSubscription, SubscriptionState
from kiban.settings import Settings

log = structlog.get_logger("kiban.billing")


def require_gateway(gateway: StripeGateway | None) -> StripeGateway:
    """The configured gateway, or 503 billing_not_configured."""
    if gateway is None:
        raise exc.BillingNotConfigured()
    return gateway


async def ensure_customer(session: AsyncSession, gateway: StripeGateway, user: User) -> str:
    """The user's Stripe customer id, created in Stripe and remembered on first use."""
    existing = await repo.customer_of_user(session, user.id)
    if existing is not None:
        return existing.stripe_customer_id
    customer_id = await gateway.create_customer(email=user.email, user_id=str(user.id))
    return await repo.link_customer(session, user.id, customer_id)


async def start_checkout(
    session: AsyncSession,
    gateway: StripeGateway,
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
    customer_id = await ensure_customer(session, gateway, user)
    base = settings.base_url.rstrip("/")
    return await gateway.create_checkout_session(
        customer_id=customer_id,
        price_id=plan.stripe_price_ids[0],
        user_id=str(user.id),
        plan=plan.name,
        success_url=settings.billing_success_url
        or f"{base}/billing/success?session_id={{CHECKOUT_SESSION_ID}}",
        cancel_url=settings.billing_cancel_url or f"{base}/billing/cancel",
    )


async def open_portal(
    session: AsyncSession, gateway: StripeGateway, settings: Settings, user: User
) -> str:
    """A Customer Portal url for the user's Stripe customer."""
    customer = await repo.customer_of_user(session, user.id)
    if customer is None:
        raise exc.NoBillingAccount()
    return await gateway.create_portal_session(
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
    entitlement = await resolve_entitlement(session, user, now, catalog=catalog)
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


@dataclass(frozen=True)
class Receipt:
    event_id: str
    type: str
    duplicate: bool
    outcome: str | None


def webhook_secrets(settings: Settings) -> list[str]:
    """The webhook signing secrets (several while rolling), or 503 webhook_not_configured."""
    raw = (
        settings.stripe_webhook_secret.get_secret_value() if settings.stripe_webhook_secret else ""
    )
    secrets = [s.strip() for s in raw.split(",") if s.strip()]
    if not secrets:
        raise exc.WebhookNotConfigured()
    return secrets


def _retryable(error: DBAPIError) -> bool:
    # Deadlock, serialization failure (PostgreSQL), or a busy SQLite: the transaction did nothing
    # and can simply run again.
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return code in ("40P01", "40001") or "database is locked" in str(error.orig)


async def receive_webhook(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    payload: bytes,
    signature: str | None,
) -> Receipt:
    """Verify, record once in the inbox and apply, all in one transaction per event."""
    secrets = webhook_secrets(settings)
    verify_signature(
        payload, signature, secrets, tolerance=settings.stripe_webhook_tolerance_seconds
    )
    event = parse_event(payload)
    for attempt in range(4):
        try:
            return await _record_and_apply(sessionmaker, event, grace(settings))
        except DBAPIError as e:
            if attempt == 3 or not _retryable(e):
                raise
            log.warning("webhook_retry", event_id=event.id, attempt=attempt + 1, error=str(e.orig))
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


async def _record_and_apply(
    sessionmaker: async_sessionmaker[AsyncSession], event: StripeEvent, grace: timedelta
) -> Receipt:
    async with session_scope(sessionmaker) as session:
        # The insert comes first: it is the lock (PostgreSQL waits on the unique key, SQLite's
        # writer lock is taken now), and a duplicate stops here, before any read.
        if not await repo.record_event(session, event, subscription_id_of(event)):
            log.info("webhook_duplicate", event_id=event.id, type=event.type)
            return Receipt(event.id, event.type, duplicate=True, outcome=None)
        outcome = await apply_event(session, event, grace)
        await repo.mark_event(session, event.id, outcome)
    log.info("webhook_applied", event_id=event.id, type=event.type, outcome=outcome)
    return Receipt(event.id, event.type, duplicate=False, outcome=outcome)
