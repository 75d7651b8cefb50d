"""Billing request and response bodies."""

from __future__ import annotations

from datetime import datetime

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
    plan: str
    status: SubscriptionState
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
