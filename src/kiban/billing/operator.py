"""What an operator sees of billing: subscriptions with their state now, and the webhook inbox."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.billing import state
from kiban.billing.fold import OUTCOMES
from kiban.billing.plans import PlanCatalog
from kiban.billing.schemas import (
    InboxEventOut,
    InboxPage,
    SubscriptionPage,
    SubscriptionRowOut,
)
from kiban.models import User
from kiban.models.billing import BillingSubscription, WebhookEvent


async def subscription_page(
    session: AsyncSession,
    catalog: PlanCatalog,
    *,
    now: datetime,
    grace: timedelta,
    user_id: uuid.UUID | None = None,
    limit: int = 50,
    offset: int = 0,
) -> SubscriptionPage:
    """Subscriptions, the newest first (by Stripe's time), with each one's state at ``now``."""
    where = [] if user_id is None else [BillingSubscription.user_id == user_id]
    total = await session.scalar(
        select(func.count()).select_from(BillingSubscription).where(*where)
    )
    rows = (
        await session.execute(
            select(BillingSubscription, User.email)
            .outerjoin(User, User.id == BillingSubscription.user_id)
            .where(*where)
            .order_by(
                BillingSubscription.last_event_created.desc().nulls_last(),
                BillingSubscription.id.desc(),
            )
            .limit(limit)
            .offset(offset)
        )
    ).all()
    items = []
    for sub, email in rows:
        status = state.state_of(sub, now, grace)
        plan = catalog.for_price(sub.price_id) if sub.price_id else None
        items.append(
            SubscriptionRowOut(
                stripe_subscription_id=sub.stripe_subscription_id,
                stripe_customer_id=sub.stripe_customer_id,
                user_id=sub.user_id,
                email=email,
                plan=plan.name if plan else None,
                price_id=sub.price_id,
                status=status,
                paid_access=status in state.PAID_STATES,
                stripe_status=sub.stripe_status,
                current_period_end=sub.current_period_end,
                cancel_at_period_end=sub.cancel_at_period_end,
                past_due_since=sub.past_due_since,
                last_event_id=sub.last_event_id,
                updated_at=sub.updated_at,
            )
        )
    return SubscriptionPage(items=items, total=int(total or 0), limit=limit, offset=offset)


async def inbox_page(
    session: AsyncSession,
    *,
    outcomes: tuple[str, ...] = (),
    types: tuple[str, ...] = (),
    subscription_id: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> InboxPage:
    """Inbox events, the latest received first, filtered and keyset-paginated by row id."""
    where: list[ColumnElement[bool]] = []
    if outcomes:
        where.append(WebhookEvent.outcome.in_(outcomes))
    if types:
        where.append(WebhookEvent.type.in_(types))
    if subscription_id:
        where.append(WebhookEvent.subscription_id == subscription_id)
    page = where + ([WebhookEvent.id < before] if before is not None else [])
    rows = (
        await session.scalars(
            select(WebhookEvent).where(*page).order_by(WebhookEvent.id.desc()).limit(limit + 1)
        )
    ).all()
    counts = dict(
        (
            await session.execute(
                select(WebhookEvent.outcome, func.count()).group_by(WebhookEvent.outcome)
            )
        ).all()
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return InboxPage(
        items=[inbox_event_out(row) for row in rows],
        next_before=rows[-1].id if more and rows else None,
        counts={outcome: int(counts.get(outcome, 0)) for outcome in OUTCOMES},
    )


def inbox_event_out(row: WebhookEvent, *, with_payload: bool = False) -> InboxEventOut:
    """One inbox row for the API."""
    return InboxEventOut(
        id=row.id,
        stripe_event_id=row.stripe_event_id,
        type=row.type,
        created=datetime.fromtimestamp(row.created, UTC),
        received_at=row.received_at,
        processed_at=row.processed_at,
        outcome=row.outcome,
        detail=row.detail,
        subscription_id=row.subscription_id,
        livemode=row.livemode,
        payload=row.payload if with_payload else None,
    )
