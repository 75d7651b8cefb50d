"""Realistic Stripe events, built offline (``kiban stripe simulate`` and the tests post them).

The shapes follow Stripe's API at ``STRIPE_API_VERSION``: the current period lives on the
subscription items, an invoice names its subscription under ``parent.subscription_details``.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from kiban.billing.stripe_client import STRIPE_API_VERSION

SIMULATED_EVENTS = (
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
)


def new_id(prefix: str) -> str:
    """A Stripe-looking id (``cus_``, ``sub_``, ``in_``, ``evt_`` ...)."""
    return f"{prefix}_{secrets.token_hex(12)}"


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def subscription_object(
    *,
    subscription_id: str,
    customer_id: str,
    price_id: str,
    status: str,
    period_start: datetime,
    period_end: datetime,
    cancel_at_period_end: bool = False,
    user_id: str | None = None,
    ended_at: datetime | None = None,
) -> dict[str, Any]:
    """A subscription object with one item (the period on the item, as since 2025-03-31)."""
    start, end = _ts(period_start), _ts(period_end)
    return {
        "id": subscription_id,
        "object": "subscription",
        "customer": customer_id,
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "cancel_at": end if cancel_at_period_end else None,
        "canceled_at": _ts(ended_at),
        "ended_at": _ts(ended_at),
        "created": start,
        "start_date": start,
        "collection_method": "charge_automatically",
        "currency": "usd",
        "livemode": False,
        "metadata": {"user_id": user_id} if user_id else {},
        "items": {
            "object": "list",
            "data": [
                {
                    "id": new_id("si"),
                    "object": "subscription_item",
                    "subscription": subscription_id,
                    "quantity": 1,
                    "current_period_start": start,
                    "current_period_end": end,
                    "price": {
                        "id": price_id,
                        "object": "price",
                        "active": True,
                        "currency": "usd",
                        "recurring": {"interval": "month", "interval_count": 1},
                        "type": "recurring",
                    },
                }
            ],
            "has_more": False,
        },
    }


def invoice_object(
    *,
    customer_id: str,
    subscription_id: str,
    price_id: str,
    paid: bool,
    period_start: datetime,
    period_end: datetime,
    billing_reason: str = "subscription_cycle",
) -> dict[str, Any]:
    """A subscription invoice, paid or with a failed payment attempt."""
    start, end = _ts(period_start), _ts(period_end)
    return {
        "id": new_id("in"),
        "object": "invoice",
        "customer": customer_id,
        "status": "paid" if paid else "open",
        "paid": paid,
        "attempted": True,
        "attempt_count": 1,
        "amount_due": 2000,
        "amount_paid": 2000 if paid else 0,
        "currency": "usd",
        "billing_reason": billing_reason,
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"subscription": subscription_id, "metadata": {}},
        },
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": new_id("il"),
                    "object": "line_item",
                    "amount": 2000,
                    "period": {"start": start, "end": end},
                    "pricing": {"price_details": {"price": price_id}},
                }
            ],
            "has_more": False,
        },
    }


def checkout_session_object(
    *, customer_id: str, subscription_id: str, user_id: str, plan: str
) -> dict[str, Any]:
    """A completed subscription-mode Checkout session, as kiban creates them."""
    return {
        "id": new_id("cs_test"),
        "object": "checkout.session",
        "mode": "subscription",
        "status": "complete",
        "payment_status": "paid",
        "customer": customer_id,
        "subscription": subscription_id,
        "client_reference_id": user_id,
        "metadata": {"user_id": user_id, "plan": plan},
        "livemode": False,
    }


def event(event_type: str, obj: dict[str, Any], *, created: int) -> dict[str, Any]:
    """Wrap an object in an event envelope."""
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
