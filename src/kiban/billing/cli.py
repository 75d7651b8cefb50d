"""``kiban billing expire|reconcile`` and ``kiban stripe simulate``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import orjson
import typer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kiban.billing import simulate, state
from kiban.billing.plans import catalog_for
from kiban.billing.reconcile import reconcile as reconcile_subscriptions
from kiban.billing.service import grace
from kiban.billing.stripe_client import StripeClient
from kiban.billing.webhooks import sign_payload
from kiban.core import clock
from kiban.core.db import create_engine, create_sessionmaker, session_scope
from kiban.models import User
from kiban.models.billing import BillingCustomer, BillingSubscription
from kiban.settings import ConfigurationError, Settings

billing_app = typer.Typer(
    help="Subscription upkeep: expiry sweep, drift repair.", no_args_is_help=True
)
stripe_app = typer.Typer(help="Stripe tools for local development.", no_args_is_help=True)

T = TypeVar("T")


def _run(settings: Settings, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = create_engine(settings.database_url)
        try:
            return await work(create_sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(2)


@billing_app.command()
def expire() -> None:
    """Mark subscriptions whose paid access has ended as expired (run it from cron)."""
    settings = Settings()

    async def work(sessionmaker: async_sessionmaker[AsyncSession]) -> list[BillingSubscription]:
        async with session_scope(sessionmaker) as session:
            return await state.expire_due(session, grace(settings))

    expired = _run(settings, work)
    for sub in expired:
        typer.echo(f"expired {sub.stripe_subscription_id} (user {sub.user_id})")
    typer.echo(f"{len(expired)} subscription(s) expired")


@billing_app.command()
def reconcile() -> None:
    """Re-read subscriptions from Stripe, repair drift and apply waiting events; print changes."""
    settings = Settings()
    found = StripeClient.from_settings(settings)
    if found is None:
        raise _fail("KIBAN_STRIPE_SECRET_KEY is not set")
    stripe = found

    async def work(sessionmaker: async_sessionmaker[AsyncSession]) -> Any:
        try:
            return await reconcile_subscriptions(sessionmaker, stripe, grace(settings))
        finally:
            await stripe.aclose()

    changes, missing, reapplied = _run(settings, work)
    for change in changes:
        typer.echo(f"changed {change.describe()}")
    for sub_id in missing:
        typer.secho(f"not found in Stripe: {sub_id} (left as is)", fg="yellow")
    for event_id, before, after in reapplied:
        typer.echo(f"re-applied {event_id}: {before} -> {after}")
    typer.echo(f"{len(changes)} subscription(s) repaired, {len(reapplied)} waiting event(s) moved")


async def _latest(session: AsyncSession, user: User) -> BillingSubscription | None:
    return await session.scalar(
        select(BillingSubscription)
        .where(BillingSubscription.user_id == user.id)
        .order_by(BillingSubscription.id.desc())
        .limit(1)
    )


async def build_event(
    session: AsyncSession,
    settings: Settings,
    event_type: str,
    *,
    email: str,
    plan_name: str,
    status: str | None,
    cancel_at_period_end: bool,
    days: int,
) -> dict[str, Any]:
    """A realistic event of ``event_type`` for the user, continuing what the database holds."""
    user = await session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
    if user is None:
        raise _fail(f"no user with email {email!r}")
    try:
        plan = catalog_for(settings).plans.get(plan_name)
    except ConfigurationError as e:
        raise _fail(str(e)) from e
    if plan is None or not plan.stripe_price_ids:
        raise _fail(
            f"plan {plan_name!r} has no Stripe price: set KIBAN_STRIPE_PRICES="
            f'"{plan_name}=price_dev_{plan_name}" (the same for `kiban serve`)'
        )
    customer = await session.get(BillingCustomer, user.id)
    customer_id = customer.stripe_customer_id if customer else simulate.new_id("cus_sim")
    latest = await _latest(session, user)
    now = clock.now()
    created = int(now.timestamp())
    if event_type == "checkout.session.completed":
        obj = simulate.checkout_session_object(
            customer_id=customer_id,
            subscription_id=simulate.new_id("sub_sim"),
            user_id=str(user.id),
            plan=plan.name,
        )
        return simulate.event(event_type, obj, created=created)
    fresh = event_type == "customer.subscription.created"
    if latest is None and not fresh:
        raise _fail(f"{email} has no subscription yet: simulate checkout.session.completed first")
    # A subscription linked by checkout but never described yet is the one being created.
    if latest is not None and (not fresh or latest.stripe_status is None):
        sub_id = latest.stripe_subscription_id
        price_id = latest.price_id or plan.stripe_price_ids[0]
        start = latest.current_period_start or now
        end = latest.current_period_end or now + timedelta(days=days)
    else:
        sub_id, price_id = simulate.new_id("sub_sim"), plan.stripe_price_ids[0]
        start, end = now, now + timedelta(days=days)
    if fresh:
        start, end = now, now + timedelta(days=days)
    if event_type.startswith("invoice."):
        obj = simulate.invoice_object(
            customer_id=customer_id,
            subscription_id=sub_id,
            price_id=price_id,
            paid=event_type == "invoice.paid",
            period_start=start,
            period_end=end,
        )
        return simulate.event(event_type, obj, created=created)
    deleted = event_type == "customer.subscription.deleted"
    obj = simulate.subscription_object(
        subscription_id=sub_id,
        customer_id=customer_id,
        price_id=price_id,
        status="canceled" if deleted else status or "active",
        period_start=start,
        period_end=end,
        cancel_at_period_end=cancel_at_period_end,
        user_id=str(user.id),
        ended_at=now if deleted else None,
    )
    return simulate.event(event_type, obj, created=created)


@stripe_app.command("simulate")
def simulate_event(
    event_type: str = typer.Argument(
        ..., metavar="EVENT", help=", ".join(simulate.SIMULATED_EVENTS)
    ),
    email: str = typer.Option(..., "--email", help="The user the event is about."),
    url: str = typer.Option("http://127.0.0.1:8000/billing/webhook", help="The webhook endpoint."),
    plan: str = typer.Option("pro", help="The plan whose first Stripe price the event uses."),
    status: str | None = typer.Option(
        None, help="Subscription status for customer.subscription.* (default: active)."
    ),
    cancel_at_period_end: bool = typer.Option(
        False, "--cancel-at-period-end", help="The subscription will not renew."
    ),
    days: int = typer.Option(30, min=1, help="Length of a new billing period, in days."),
) -> None:
    """Post a correctly signed, realistic Stripe event for a user to the local webhook."""
    if event_type not in simulate.SIMULATED_EVENTS:
        raise _fail(f"EVENT must be one of: {', '.join(simulate.SIMULATED_EVENTS)}")
    try:
        settings = Settings()
    except ConfigurationError as e:
        raise _fail(str(e)) from e
    if settings.stripe_webhook_secret is None:
        raise _fail("KIBAN_STRIPE_WEBHOOK_SECRET is not set (the server must use the same one)")
    secret = settings.stripe_webhook_secret.get_secret_value().split(",")[0].strip()

    async def work(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
        async with session_scope(sessionmaker) as session:
            return await build_event(
                session,
                settings,
                event_type,
                email=email,
                plan_name=plan,
                status=status,
                cancel_at_period_end=cancel_at_period_end,
                days=days,
            )

    event = _run(settings, work)
    body = orjson.dumps(event)
    try:
        response = httpx.post(
            url,
            content=body,
            headers={
                "Stripe-Signature": sign_payload(secret, body),
                "Content-Type": "application/json",
            },
            timeout=30,
        )
    except httpx.HTTPError as e:
        raise _fail(f"could not reach {url}: {e} (is `kiban serve` running?)") from e
    typer.echo(f"{event_type} {event['id']} -> HTTP {response.status_code} {response.text}")
    if not response.is_success:
        raise typer.Exit(1)
