"""Billing request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from kiban.models.billing import SubscriptionState


class CheckoutIn(BaseModel):
    plan: str = Field(min_length=1, max_length=64, examples=["pro"])


class CheckoutOut(BaseModel):
    url: str
    session_id: str


class PortalOut(BaseModel):
    url: str


class SubscriptionOut(BaseModel):
    plan: str  # the plan's name (from the plans file)
    status: SubscriptionState  # free, trialing, active, past_due, canceled, expired
    current_period_end: datetime | None
    cancel_at_period_end: bool


class WebhookOut(BaseModel):
    received: bool = True
    event_id: str
    duplicate: bool
    outcome: str | None


class ReturnOut(BaseModel):
    status: str
    message: str
    session_id: str | None = None


class SubscriptionRowOut(BaseModel):
    """One subscription as an operator sees it: whose, which plan, its state now."""

    stripe_subscription_id: str
    stripe_customer_id: str | None
    user_id: uuid.UUID | None  # None: unmatched, no user known for the customer yet
    email: str | None
    plan: str | None  # None: a price the plans file does not list
    price_id: str | None
    status: SubscriptionState
    paid_access: bool
    stripe_status: str | None  # None: only invoices or a checkout seen so far
    current_period_end: datetime | None
    cancel_at_period_end: bool
    past_due_since: datetime | None
    last_event_id: str | None
    updated_at: datetime


class SubscriptionPage(BaseModel):
    items: list[SubscriptionRowOut]
    total: int
    limit: int
    offset: int


class InboxEventOut(BaseModel):
    """One event of the webhook inbox and what applying it did."""

    id: int
    stripe_event_id: str
    type: str
    created: datetime  # Stripe's time of the event
    received_at: datetime
    processed_at: datetime | None
    outcome: str | None  # applied, ignored, pending, unmatched, failed
    detail: str | None
    subscription_id: str | None
    livemode: bool
    payload: dict[str, Any] | None = None  # only on GET /admin/billing/events/{id}


class InboxPage(BaseModel):
    items: list[InboxEventOut]
    next_before: int | None  # pass as ``before`` for the next page
    counts: dict[str, int]  # events per outcome, in the whole inbox


class ReapplyOut(BaseModel):
    event_id: str
    outcome: str
    detail: str | None
