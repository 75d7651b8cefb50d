"""Apply one Stripe event to our subscription rows, in the transaction that put it in the inbox.

Ordering: Stripe does not deliver events in order, so each subscription row keeps the ``created``
time of the newest event applied to it, and an older event changes nothing (outcome ``stale``).
``created`` has one-second resolution; within one second, a ``customer.subscription.created`` never
overwrites a snapshot we already hold, and a status never moves backwards in the lifecycle
(incomplete → active/trialing/past_due → unpaid/paused → canceled); otherwise arrival order
decides. ``kiban billing reconcile`` repairs anything this leaves wrong. See docs/decisions/0040.

A subscription event made stale only by an invoice event (which carries no period) still brings
a later billing period: a renewal delivered after its invoice must not leave the old period end.

Outcomes: ``applied``, ``stale`` (older than what we hold), ``ignored`` (a type we do not act on,
or an invoice without a subscription), ``pending`` (an invoice for a subscription we hold no
snapshot of yet), ``unmatched`` (stored, but we cannot tell whose it is yet).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.billing import repository as repo
from kiban.billing.snapshot import (
    SubscriptionSnapshot,
    checkout_completion,
    invoice_subscription_id,
    object_id,
    subscription_snapshot,
)
from kiban.billing.state import ENDED_STATUSES, RENEWING_STATUSES, state_of
from kiban.billing.webhooks import StripeEvent
from kiban.core import clock
from kiban.models.billing import BillingSubscription

log = structlog.get_logger("kiban.billing")

SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        # Optional to enable: they carry the whole subscription like the three above.
        "customer.subscription.paused",
        "customer.subscription.resumed",
    }
)
# Stripe sends both for a paid invoice; localstripe and older integrations only the second.
INVOICE_PAID_EVENTS = frozenset({"invoice.paid", "invoice.payment_succeeded"})
INVOICE_FAILED_EVENT = "invoice.payment_failed"
CHECKOUT_COMPLETED_EVENT = "checkout.session.completed"
INVOICE_EVENTS = INVOICE_PAID_EVENTS | {INVOICE_FAILED_EVENT}
HANDLED_EVENTS = SUBSCRIPTION_EVENTS | INVOICE_EVENTS | {CHECKOUT_COMPLETED_EVENT}

_LIFECYCLE_RANK = {
    "incomplete": 0,
    "trialing": 1,
    "active": 1,
    "past_due": 1,
    "unpaid": 2,
    "paused": 2,
    "canceled": 3,
    "incomplete_expired": 3,
}


def subscription_id_of(event: StripeEvent) -> str | None:
    """The subscription an event is about, if any (stored on the inbox row)."""
    if event.type in SUBSCRIPTION_EVENTS:
        return object_id(event.object.get("id"))
    if event.type.startswith("invoice."):
        return invoice_subscription_id(event.object)
    if event.type == CHECKOUT_COMPLETED_EVENT:
        return checkout_completion(event.object).subscription_id
    return None


async def apply_event(session: AsyncSession, event: StripeEvent, grace: timedelta) -> str:
    """Apply the event; returns the outcome recorded in the inbox."""
    if event.type in SUBSCRIPTION_EVENTS:
        return await _on_subscription(session, event, grace)
    if event.type in INVOICE_EVENTS:
        return await _on_invoice(session, event, grace)
    if event.type == CHECKOUT_COMPLETED_EVENT:
        return await _on_checkout_completed(session, event, grace)
    return "ignored"


def _event_time(event: StripeEvent) -> datetime:
    return datetime.fromtimestamp(event.created, UTC)


def _is_stale(row: BillingSubscription, event: StripeEvent, new_status: str | None) -> bool:
    last = row.last_event_created
    if last is None or event.created > last:
        return False
    if event.created < last:
        return True
    if event.type == "customer.subscription.created" and row.stripe_status is not None:
        return True
    if new_status is None or row.stripe_status is None:
        return False
    return _LIFECYCLE_RANK.get(new_status, 1) < _LIFECYCLE_RANK.get(row.stripe_status, 1)


async def _link_user(
    session: AsyncSession, row: BillingSubscription, customer_id: str | None, hint: str | None
) -> None:
    if customer_id and row.stripe_customer_id is None:
        row.stripe_customer_id = customer_id
    if row.user_id is not None:
        return
    user_id: uuid.UUID | None = None
    if row.stripe_customer_id:
        user_id = await repo.user_id_of_customer(session, row.stripe_customer_id)
    row.user_id = user_id or await repo.existing_user_id(session, hint)


def _stamp(row: BillingSubscription, created: int, event_id: str, grace: timedelta) -> None:
    row.last_event_created = max(created, row.last_event_created or 0)
    row.last_event_id = event_id
    row.state = state_of(row, clock.now(), grace)
    row.updated_at = clock.now()


def apply_snapshot(
    row: BillingSubscription,
    snap: SubscriptionSnapshot,
    *,
    created: int,
    event_id: str,
    grace: timedelta,
) -> None:
    """Make the row say what the snapshot says (the caller checked it is not stale)."""
    if snap.status == "past_due":
        if row.stripe_status != "past_due" or row.past_due_since is None:
            row.past_due_since = datetime.fromtimestamp(created, UTC)
    else:
        row.past_due_since = None
    row.stripe_status = snap.status
    row.price_id = snap.price_id or row.price_id
    row.current_period_start = snap.current_period_start or row.current_period_start
    row.current_period_end = snap.current_period_end or row.current_period_end
    row.cancel_at_period_end = snap.cancel_at_period_end
    row.ended_at = snap.ended_at
    _stamp(row, created, event_id, grace)


async def _on_subscription(session: AsyncSession, event: StripeEvent, grace: timedelta) -> str:
    snap = subscription_snapshot(event.object)
    if snap is None:
        return "ignored"
    row = await repo.lock_subscription(session, snap.id)
    await _link_user(session, row, snap.customer_id, snap.user_id_hint)
    if _is_stale(row, event, snap.status):
        if await repo.event_type(session, row.last_event_id) in INVOICE_EVENTS:
            _take_later_period(row, snap, grace)
        return "stale"
    apply_snapshot(row, snap, created=event.created, event_id=event.id, grace=grace)
    return "applied" if row.user_id is not None else "unmatched"


def _take_later_period(
    row: BillingSubscription, snap: SubscriptionSnapshot, grace: timedelta
) -> None:
    # Older than an invoice event, which moved the guard but carries no period, this can still be
    # the first news of a new billing period: a renewal's `customer.subscription.updated`
    # delivered after its `invoice.paid`. A period never starts before the one it follows, so the
    # later start is the newer period whatever the delivery order.
    start, end = snap.current_period_start, snap.current_period_end
    if start is None or end is None or row.current_period_start is None:
        return
    if start > row.current_period_start:
        row.current_period_start, row.current_period_end = start, end
        row.state = state_of(row, clock.now(), grace)
        row.updated_at = clock.now()


async def _on_invoice(session: AsyncSession, event: StripeEvent, grace: timedelta) -> str:
    sub_id = invoice_subscription_id(event.object)
    if sub_id is None:
        return "ignored"
    row = await repo.lock_subscription(session, sub_id)
    await _link_user(session, row, object_id(event.object.get("customer")), None)
    if row.stripe_status is None:
        return "pending"  # the subscription's own events will bring its state
    paid = event.type in INVOICE_PAID_EVENTS
    new_status = row.stripe_status
    if row.stripe_status in ENDED_STATUSES - {"unpaid"}:
        pass  # a paid or failed invoice never revives an ended subscription
    elif paid and row.stripe_status in ("past_due", "unpaid"):
        new_status = "active"
    elif (
        not paid
        and row.stripe_status in RENEWING_STATUSES
        and event.object.get("billing_reason") != "subscription_create"
    ):
        new_status = "past_due"
    if _is_stale(row, event, new_status):
        return "stale"
    if new_status == "past_due" and row.stripe_status != "past_due":
        row.past_due_since = _event_time(event)
    elif new_status != "past_due":
        row.past_due_since = None
    row.stripe_status = new_status
    _stamp(row, event.created, event.id, grace)
    return "applied" if row.user_id is not None else "unmatched"


async def _on_checkout_completed(
    session: AsyncSession, event: StripeEvent, grace: timedelta
) -> str:
    done = checkout_completion(event.object)
    user_id = await repo.existing_user_id(session, done.user_id_hint)
    if user_id is None and done.customer_id:
        user_id = await repo.user_id_of_customer(session, done.customer_id)
    if user_id is None:
        log.warning("checkout_unmatched", event_id=event.id, customer=done.customer_id)
        return "unmatched"
    if done.customer_id:
        stored = await repo.link_customer(session, user_id, done.customer_id)
        if stored != done.customer_id:
            log.warning("checkout_other_customer", user_id=str(user_id), customer=done.customer_id)
    if done.subscription_id is None:
        return "ignored"  # a one-off payment, not a subscription
    row = await repo.lock_subscription(session, done.subscription_id)
    row.user_id = row.user_id or user_id
    row.stripe_customer_id = row.stripe_customer_id or done.customer_id
    snap = subscription_snapshot(done.subscription) if done.subscription else None
    # The session does not say what state the subscription is in (unless expanded), so it
    # links the row to the user without moving the ordering guard.
    if snap is not None and not _is_stale(row, event, snap.status):
        apply_snapshot(row, snap, created=event.created, event_id=event.id, grace=grace)
    else:
        row.state = state_of(row, clock.now(), grace)
        row.updated_at = clock.now()
    return "applied"
