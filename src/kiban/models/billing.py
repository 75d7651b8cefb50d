"""Billing: Stripe customers, subscriptions (with their access state) and the webhook inbox."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    ForeignKey,
    ScalarSelect,
    String,
    UniqueConstraint,
    exists,
    func,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core import clock
from kiban.models.base import Base, BigIntPK


class SubscriptionState(StrEnum):
    """What a subscription means for access (``billing.state`` decides the transitions)."""

    FREE = "free"  # never paid (no subscription yet, or its first payment is incomplete)
    TRIALING = "trialing"  # in its trial, renews into a paid period
    ACTIVE = "active"  # paid, renews
    PAST_DUE = "past_due"  # a payment failed; access kept for a grace period within the period
    CANCELED = "canceled"  # will not renew; access until current_period_end
    EXPIRED = "expired"  # access has ended


class BillingCustomer(Base):
    """The Stripe customer of one user (created on the first checkout)."""

    __tablename__ = "billing_customers"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    stripe_customer_id: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)


class BillingSubscription(Base):
    """One Stripe subscription, folded from its events, and the access state derived from it."""

    __tablename__ = "billing_subscriptions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    stripe_subscription_id: Mapped[str] = mapped_column(String(255), unique=True)
    # NULL until a checkout session, the customer or the metadata tells us whose it is.
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True, default=None
    )
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), index=True, default=None)
    price_id: Mapped[str | None] = mapped_column(String(255), default=None)
    # Stripe's own status (active, trialing, past_due, canceled, unpaid, incomplete, ...);
    # NULL until an event carrying the subscription itself has been applied.
    stripe_status: Mapped[str | None] = mapped_column(String(32), default=None)
    state: Mapped[str] = mapped_column(String(16), default=SubscriptionState.FREE)
    current_period_start: Mapped[datetime | None] = mapped_column(default=None)
    current_period_end: Mapped[datetime | None] = mapped_column(default=None)
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False)
    past_due_since: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    # The newest event of the fold, in Stripe's order (``created`` in unix seconds).
    last_event_created: Mapped[int | None] = mapped_column(BigInteger, default=None)
    last_event_id: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now)


class WebhookEvent(Base):
    """The webhook inbox: every Stripe event received, once (the unique event id is the guard)."""

    __tablename__ = "billing_webhook_events"
    __table_args__ = (UniqueConstraint("stripe_event_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    stripe_event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(128), index=True)
    created: Mapped[int] = mapped_column(BigInteger)  # Stripe's unix seconds
    livemode: Mapped[bool] = mapped_column(default=False)
    # What applying it did (``billing.fold``): applied, ignored, pending, unmatched, failed;
    # ``detail`` says why where that is not obvious (the reason it is ignored, the error).
    outcome: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    detail: Mapped[str | None] = mapped_column(String(255), default=None)
    subscription_id: Mapped[str | None] = mapped_column(String(255), index=True, default=None)
    received_at: Mapped[datetime] = mapped_column(default=clock.now)
    processed_at: Mapped[datetime | None] = mapped_column(default=None)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


def may_grant_access(user_id: Any, now: Any) -> tuple[ColumnElement[bool], ...]:
    """The SQL side of "grants paid access at ``now``": a row outside it never does
    (``billing.state`` decides the rest from the status, the grace and the time)."""
    return (*_may_ever_grant_access(user_id), BillingSubscription.current_period_end > now)


def _may_ever_grant_access(user_id: Any) -> tuple[ColumnElement[bool], ...]:
    # The part of ``may_grant_access`` that does not depend on the time.
    return (BillingSubscription.user_id == user_id, BillingSubscription.stripe_status.is_not(None))


def may_have_paid_access(user_id: Any, now: Any) -> ColumnElement[bool]:
    """A SQL EXISTS that is false only if ``billing.state.paid_subscription`` would find nothing at
    ``now`` (or later): the admin's quota page selects it, so free users skip that query (the
    API-key lookup selects ``paid_access_until`` instead)."""
    return exists().where(*may_grant_access(user_id, now))


def paid_access_until(user_id: Any) -> ScalarSelect[datetime | None]:
    """The latest period end among the user's subscriptions that could grant paid access.

    ``may_have_paid_access(user_id, now)`` is exactly ``paid_access_until(user_id) > now``: the
    API-key cache keeps this instant and compares it with each request's time, so a period that
    ends while a key is cached is judged when it ends.
    """
    return (
        select(func.max(BillingSubscription.current_period_end))
        .where(*_may_ever_grant_access(user_id))
        .scalar_subquery()
    )
