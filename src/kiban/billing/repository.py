"""Billing queries: customers, subscription rows (locked for update) and the webhook inbox."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.billing.webhooks import StripeEvent
from kiban.core import clock
from kiban.models import User
from kiban.models.billing import BillingCustomer, BillingSubscription, WebhookEvent


async def insert_if_absent(session: AsyncSession, table: Table, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True when this call inserted the row.

    Both databases spell it the same way but SQLAlchemy builds it per dialect. On PostgreSQL a
    second transaction inserting the same key waits for the first to finish, then does nothing:
    this is what makes "two copies of one event on two processes" apply once.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    primary = next(iter(table.primary_key.columns))
    statement = insert(table).values(**values).on_conflict_do_nothing().returning(primary)
    return (await session.execute(statement)).first() is not None


async def record_event(
    session: AsyncSession, event: StripeEvent, subscription_id: str | None
) -> bool:
    """Put the event in the inbox; False when it was already there (a duplicate delivery)."""
    return await insert_if_absent(
        session,
        WebhookEvent.__table__,  # type: ignore[arg-type]
        {
            "stripe_event_id": event.id,
            "type": event.type,
            "created": event.created,
            "livemode": event.livemode,
            "subscription_id": subscription_id,
            "received_at": clock.now(),
            "payload": event.payload,
        },
    )


async def mark_event(
    session: AsyncSession, event_id: str, outcome: str, detail: str | None = None
) -> None:
    """Record what applying the event did (and why, where that is not obvious)."""
    await session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.stripe_event_id == event_id)
        .values(outcome=outcome, detail=detail and detail[:255], processed_at=clock.now())
    )


async def inbox_event(session: AsyncSession, event_id: str) -> WebhookEvent | None:
    """One event of the inbox, by its Stripe id."""
    return await session.scalar(
        select(WebhookEvent)
        .where(WebhookEvent.stripe_event_id == event_id)
        .execution_options(populate_existing=True)
    )


async def subscription_events(session: AsyncSession, subscription_id: str) -> list[WebhookEvent]:
    """Every inbox event about the subscription (the fold sorts them)."""
    return list(
        (
            await session.scalars(
                select(WebhookEvent)
                .where(WebhookEvent.subscription_id == subscription_id)
                .execution_options(populate_existing=True)
            )
        ).all()
    )


async def unlinked_subscription_ids(session: AsyncSession, customer_id: str) -> list[str]:
    """The customer's subscriptions that we cannot tell the user of yet."""
    return list(
        (
            await session.scalars(
                select(BillingSubscription.stripe_subscription_id).where(
                    BillingSubscription.stripe_customer_id == customer_id,
                    BillingSubscription.user_id.is_(None),
                )
            )
        ).all()
    )


async def customer_of_user(session: AsyncSession, user_id: uuid.UUID) -> BillingCustomer | None:
    """The user's Stripe customer mapping, if any."""
    return await session.get(BillingCustomer, user_id)


async def user_id_of_customer(session: AsyncSession, customer_id: str) -> uuid.UUID | None:
    """Whose Stripe customer this is, if ours."""
    return await session.scalar(
        select(BillingCustomer.user_id).where(BillingCustomer.stripe_customer_id == customer_id)
    )


async def link_customer(session: AsyncSession, user_id: uuid.UUID, customer_id: str) -> str:
    """Remember the user's Stripe customer; returns the one stored (the first one wins)."""
    await insert_if_absent(
        session,
        BillingCustomer.__table__,  # type: ignore[arg-type]
        {"user_id": user_id, "stripe_customer_id": customer_id, "created_at": clock.now()},
    )
    stored = await session.scalar(
        select(BillingCustomer.stripe_customer_id).where(BillingCustomer.user_id == user_id)
    )
    return stored or customer_id


async def existing_user_id(session: AsyncSession, value: str | None) -> uuid.UUID | None:
    """``value`` as the id of an existing user, or None."""
    if not value:
        return None
    try:
        user_id = uuid.UUID(value)
    except ValueError:
        return None
    return await session.scalar(select(User.id).where(User.id == user_id))


async def lock_subscription(session: AsyncSession, subscription_id: str) -> BillingSubscription:
    """The subscription's row, created if new, locked until the transaction ends (PostgreSQL).

    Created with ON CONFLICT DO NOTHING first so that two transactions seeing a new subscription
    at once do not both insert it; SQLite serializes writers, so its lock is the write itself.
    """
    now = clock.now()
    await insert_if_absent(
        session,
        BillingSubscription.__table__,  # type: ignore[arg-type]
        {
            "stripe_subscription_id": subscription_id,
            "state": "free",
            "cancel_at_period_end": False,
            "created_at": now,
            "updated_at": now,
        },
    )
    row = await session.scalar(
        select(BillingSubscription)
        .where(BillingSubscription.stripe_subscription_id == subscription_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert row is not None
    return row


async def subscriptions(session: AsyncSession) -> list[BillingSubscription]:
    """Every subscription row (reconcile walks them)."""
    return list(
        (await session.scalars(select(BillingSubscription).order_by(BillingSubscription.id))).all()
    )


async def customers(session: AsyncSession) -> list[BillingCustomer]:
    """Every customer mapping (reconcile looks for subscriptions we never heard of)."""
    return list((await session.scalars(select(BillingCustomer))).all())
