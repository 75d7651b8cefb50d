"""The subscription state engine: what a Stripe subscription means for access, at a given time.

States (``SubscriptionState``)::

    FREE      never paid: no snapshot yet, or the first payment is incomplete
    TRIALING  in its trial, and will renew into a paid period
    ACTIVE    paid, and will renew
    PAST_DUE  a renewal payment failed; access for a grace period, never past the period's end
    CANCELED  will not renew (cancel_at_period_end); access until current_period_end
    EXPIRED   access has ended (period over, grace over, or Stripe ended the subscription)

Paid access holds exactly when the state allows it (TRIALING, ACTIVE, PAST_DUE, CANCELED) and the
access window (``access_ends_at``) is still ahead of ``now``: Stripe's status alone never grants
access.
The state is derived from the stored snapshot and the time, so expiry applies on every read
without a write on the request path; ``expire_due`` (``kiban billing expire``) persists it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.billing.fold import RENEWING_STATUSES
from kiban.core import clock
from kiban.models.billing import BillingSubscription, SubscriptionState, may_grant_access

PAID_STATES = frozenset(
    {
        SubscriptionState.TRIALING,
        SubscriptionState.ACTIVE,
        SubscriptionState.PAST_DUE,
        SubscriptionState.CANCELED,
    }
)


def access_ends_at(
    *,
    state: SubscriptionState,
    current_period_end: datetime | None,
    past_due_since: datetime | None,
    grace: timedelta,
) -> datetime | None:
    """When paid access ends for a subscription in ``state`` (None: it grants none)."""
    if state not in PAID_STATES or current_period_end is None:
        return None
    if state is SubscriptionState.PAST_DUE and past_due_since is not None:
        return min(current_period_end, past_due_since + grace)
    return current_period_end


def derive_state(
    *,
    stripe_status: str | None,
    cancel_at_period_end: bool,
    current_period_end: datetime | None,
    past_due_since: datetime | None,
    now: datetime,
    grace: timedelta,
) -> SubscriptionState:
    """The state a subscription is in at ``now``, from what Stripe last told us."""
    if stripe_status is None or stripe_status == "incomplete":
        return SubscriptionState.FREE
    if stripe_status in RENEWING_STATUSES:
        renewing = SubscriptionState(stripe_status)  # TRIALING or ACTIVE
        state = SubscriptionState.CANCELED if cancel_at_period_end else renewing
    elif stripe_status == "past_due":
        state = SubscriptionState.PAST_DUE
    else:  # canceled, unpaid, incomplete_expired, paused (a trial ended without a payment
        # method), and any status Stripe adds later: no access until we know better
        return SubscriptionState.EXPIRED
    ends = access_ends_at(
        state=state,
        current_period_end=current_period_end,
        past_due_since=past_due_since,
        grace=grace,
    )
    return state if ends is not None and ends > now else SubscriptionState.EXPIRED


def state_of(sub: BillingSubscription, now: datetime, grace: timedelta) -> SubscriptionState:
    """The state of a stored subscription at ``now``."""
    return derive_state(
        stripe_status=sub.stripe_status,
        cancel_at_period_end=sub.cancel_at_period_end,
        current_period_end=sub.current_period_end,
        past_due_since=sub.past_due_since,
        now=now,
        grace=grace,
    )


def has_paid_access(sub: BillingSubscription, now: datetime, grace: timedelta) -> bool:
    """Whether the subscription grants its plan at ``now``."""
    return state_of(sub, now, grace) in PAID_STATES


def refresh(sub: BillingSubscription, grace: timedelta) -> bool:
    """Store the subscription's state at the current time; True when it changed."""
    new = state_of(sub, clock.now(), grace)
    if sub.state == new:
        return False
    sub.state = new
    sub.updated_at = clock.now()
    return True


async def paid_subscription(
    session: AsyncSession, user_id: uuid.UUID, now: datetime, grace: timedelta
) -> BillingSubscription | None:
    """The user's subscription that grants paid access at ``now`` (latest period end first)."""
    rows = (
        await session.scalars(
            select(BillingSubscription)
            .where(*may_grant_access(user_id, now))
            .order_by(BillingSubscription.current_period_end.desc())
        )
    ).all()
    return next((row for row in rows if has_paid_access(row, now, grace)), None)


async def latest_subscription(
    session: AsyncSession, user_id: uuid.UUID
) -> BillingSubscription | None:
    """The user's subscription with the newest event in Stripe's order, whatever its state.

    Ordered by Stripe's time, not ours: which subscription a user sees must not depend on the
    order their events arrived in.
    """
    return await session.scalar(
        select(BillingSubscription)
        .where(BillingSubscription.user_id == user_id)
        .order_by(
            BillingSubscription.last_event_created.desc().nulls_last(),
            BillingSubscription.stripe_subscription_id.desc(),
        )
        .limit(1)
    )


async def expire_due(session: AsyncSession, grace: timedelta) -> list[BillingSubscription]:
    """Persist EXPIRED on every subscription whose access has ended (the cron sweep)."""
    now = clock.now()
    candidates = (
        await session.scalars(
            select(BillingSubscription)
            .where(
                BillingSubscription.state.in_([s.value for s in PAID_STATES]),
                or_(
                    BillingSubscription.current_period_end.is_(None),
                    BillingSubscription.current_period_end <= now,
                    BillingSubscription.past_due_since <= now - grace,
                    BillingSubscription.stripe_status.not_in([*RENEWING_STATUSES, "past_due"]),
                ),
            )
            .order_by(BillingSubscription.id)
            .with_for_update()
        )
    ).all()
    expired = [sub for sub in candidates if refresh(sub, grace)]
    await session.flush()
    return expired


def grace_period(days: float) -> timedelta:
    """The PAST_DUE grace from the setting (days, may be fractional)."""
    return timedelta(days=days)
