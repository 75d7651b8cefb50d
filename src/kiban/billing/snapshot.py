"""Read what we need from Stripe objects (plain dicts, as webhooks deliver them), across versions.

Stripe moved ``current_period_start``/``current_period_end`` from the subscription to its items in
API version 2025-03-31, and an invoice's subscription from ``invoice.subscription`` to
``invoice.parent.subscription_details.subscription``; these readers try the new place first and
fall back to the old one, so events from endpoints pinned to either version work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def _id(value: Any) -> str | None:
    """An object's id whether Stripe sent it as a string or expanded it into an object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def _time(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return datetime.fromtimestamp(value, UTC)
    return None


def _items(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = obj.get("items")
    data = items.get("data") if isinstance(items, Mapping) else items
    return [i for i in data if isinstance(i, Mapping)] if isinstance(data, list) else []


@dataclass(frozen=True)
class SubscriptionSnapshot:
    """One subscription as a Stripe object describes it."""

    id: str
    customer_id: str | None
    status: str
    price_id: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    ended_at: datetime | None
    user_id_hint: str | None  # metadata.user_id, which our Checkout sessions set


def subscription_snapshot(obj: Mapping[str, Any]) -> SubscriptionSnapshot | None:
    """The snapshot in a subscription object, or None when it has no id or status."""
    sub_id, status = _id(obj.get("id")), obj.get("status")
    if sub_id is None or not isinstance(status, str):
        return None
    items = _items(obj)
    ends = [t for t in (_time(i.get("current_period_end")) for i in items) if t]
    starts = [t for t in (_time(i.get("current_period_start")) for i in items) if t]
    period_end = max(ends) if ends else _time(obj.get("current_period_end"))
    period_start = min(starts) if starts else _time(obj.get("current_period_start"))
    price_id = None
    for item in items:
        price_id = _id(item.get("price")) or _id(item.get("plan"))
        if price_id:
            break
    price_id = price_id or _id(obj.get("plan"))
    # The portal may schedule the end with cancel_at instead of cancel_at_period_end; either way
    # the subscription will not renew.
    cancel_at = _time(obj.get("cancel_at"))
    will_end = bool(obj.get("cancel_at_period_end")) or (
        cancel_at is not None and (period_end is None or cancel_at <= period_end)
    )
    metadata = obj.get("metadata")
    hint = metadata.get("user_id") if isinstance(metadata, Mapping) else None
    return SubscriptionSnapshot(
        id=sub_id,
        customer_id=_id(obj.get("customer")),
        status=status,
        price_id=price_id,
        current_period_start=period_start,
        current_period_end=period_end,
        cancel_at_period_end=will_end,
        ended_at=_time(obj.get("ended_at")),
        user_id_hint=hint if isinstance(hint, str) else None,
    )


def invoice_subscription_id(obj: Mapping[str, Any]) -> str | None:
    """The subscription an invoice bills, if any."""
    parent = obj.get("parent")
    if isinstance(parent, Mapping):
        details = parent.get("subscription_details")
        if isinstance(details, Mapping) and _id(details.get("subscription")):
            return _id(details.get("subscription"))
    return _id(obj.get("subscription"))


@dataclass(frozen=True)
class CheckoutCompletion:
    """Who completed a Checkout session, and the customer and subscription it created."""

    user_id_hint: str | None
    customer_id: str | None
    subscription_id: str | None
    subscription: Mapping[str, Any] | None  # when the session's subscription was expanded


def checkout_completion(obj: Mapping[str, Any]) -> CheckoutCompletion:
    """Read a completed Checkout session."""
    metadata = obj.get("metadata")
    hint = obj.get("client_reference_id") or (
        metadata.get("user_id") if isinstance(metadata, Mapping) else None
    )
    sub = obj.get("subscription")
    return CheckoutCompletion(
        user_id_hint=hint if isinstance(hint, str) else None,
        customer_id=_id(obj.get("customer")),
        subscription_id=_id(sub),
        subscription=sub if isinstance(sub, Mapping) else None,
    )


def object_id(value: Any) -> str | None:
    """Public form of ``_id`` for other modules."""
    return _id(value)
