"""Apply one Stripe event, in the transaction that put it in the inbox.

A subscription's row is the stored fold of every inbox event about it (``billing.fold``):
applying an event means folding them all again, with the row locked (``SELECT ... FOR UPDATE``
on PostgreSQL; SQLite serialises writers). The last transaction to commit sees every event
committed before it, so the row always says what the whole set of events says, whatever order
they arrived in. Each event's outcome is recomputed with the fold, so an invoice that arrived
before its subscription turns from ``pending`` to ``applied`` when the subscription arrives.

Outcomes (``billing.fold``): ``applied``, ``ignored`` (with the reason in ``detail``), ``pending``
(waits for the subscription's own event), ``unmatched`` (we cannot tell whose it is yet),
``failed`` (recorded by the service when applying raised).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.billing import repository as repo
from kiban.billing.fold import (
    APPLIED,
    CHECKOUT_COMPLETED_EVENT,
    FAILED,
    HANDLED_EVENTS,
    IGNORED,
    PENDING,
    READ_EVENT,
    SUBSCRIPTION_EVENTS,
    UNMATCHED,
    Delivered,
    Folded,
    fold,
)
from kiban.billing.snapshot import checkout_completion, invoice_subscription_id, object_id
from kiban.billing.state import state_of
from kiban.billing.webhooks import StripeEvent
from kiban.core import clock
from kiban.models.billing import BillingSubscription, WebhookEvent

log = structlog.get_logger("kiban.billing")


@dataclass(frozen=True)
class Applied:
    """What applying an event did: its outcome, and why when that is not obvious."""

    outcome: str
    detail: str | None = None


def subscription_id_of(event: StripeEvent) -> str | None:
    """The subscription an event is about, if any (stored on the inbox row)."""
    if event.type in SUBSCRIPTION_EVENTS or event.type == READ_EVENT:
        return object_id(event.object.get("id"))
    if event.type.startswith("invoice."):
        return invoice_subscription_id(event.object)
    if event.type == CHECKOUT_COMPLETED_EVENT:
        return checkout_completion(event.object).subscription_id
    return None


async def apply_event(session: AsyncSession, event: StripeEvent, grace: timedelta) -> Applied:
    """Apply an event already in the inbox and record its outcome there."""
    if event.type not in HANDLED_EVENTS:
        result = Applied(IGNORED, "kiban does not act on this event type")
    else:
        user_id = None
        if event.type == CHECKOUT_COMPLETED_EVENT:
            user_id = await _link_checkout(session, event, grace)
        subscription_id = subscription_id_of(event)
        if subscription_id is not None:
            outcomes = await refold(session, subscription_id, grace)
            return outcomes[event.id]
        if event.type != CHECKOUT_COMPLETED_EVENT:
            result = Applied(IGNORED, "the event names no subscription")
        elif user_id is None:
            result = Applied(UNMATCHED, "no user matches the session")
        else:
            result = Applied(IGNORED, "a one-off payment, not a subscription")
    await repo.mark_event(session, event.id, result.outcome, result.detail)
    return result


def delivered(row: WebhookEvent) -> Delivered:
    """An inbox row as the fold reads it."""
    data = row.payload.get("data") if isinstance(row.payload, Mapping) else None
    obj: Any = data.get("object") if isinstance(data, Mapping) else None
    return Delivered(
        row.stripe_event_id,
        row.type,
        row.created,
        obj if isinstance(obj, Mapping) else {},
        received=row.id,
    )


async def refold(
    session: AsyncSession, subscription_id: str, grace: timedelta
) -> dict[str, Applied]:
    """Fold the subscription's events again, store the result and every event's outcome."""
    row = await repo.lock_subscription(session, subscription_id)
    events = await repo.subscription_events(session, subscription_id)
    folded = fold(delivered(event) for event in events)
    _store(row, folded, grace)
    if row.user_id is None:
        row.user_id = await _resolve_user(session, folded)
    outcomes = {
        event_id: _final(outcome, why, folded, row)
        for event_id, (outcome, why) in folded.outcomes.items()
    }
    for event in events:
        result = outcomes[event.stripe_event_id]
        if (event.outcome, event.detail) != (result.outcome, result.detail):
            await repo.mark_event(session, event.stripe_event_id, result.outcome, result.detail)
    return outcomes


def _store(row: BillingSubscription, folded: Folded, grace: timedelta) -> None:
    row.stripe_status = folded.status
    row.price_id = folded.price_id
    row.current_period_start = folded.current_period_start
    row.current_period_end = folded.current_period_end
    row.cancel_at_period_end = folded.cancel_at_period_end
    row.ended_at = folded.ended_at
    row.past_due_since = folded.past_due_since
    row.stripe_customer_id = row.stripe_customer_id or folded.customer_id
    row.last_event_created = folded.newest.created if folded.newest else None
    row.last_event_id = folded.newest.id if folded.newest else None
    row.state = state_of(row, clock.now(), grace)
    row.updated_at = clock.now()


def _final(outcome: str, why: str | None, folded: Folded, row: BillingSubscription) -> Applied:
    if outcome in (IGNORED, FAILED):
        return Applied(outcome, why)
    if folded.status is None:
        return Applied(PENDING, "waiting for an event that carries the subscription")
    if outcome == PENDING:
        return Applied(IGNORED, "older than the first state of the subscription held here")
    if row.user_id is None:
        customer = row.stripe_customer_id or "unknown"
        return Applied(UNMATCHED, f"no user is known for customer {customer}")
    return Applied(APPLIED)


async def _resolve_user(session: AsyncSession, folded: Folded) -> uuid.UUID | None:
    # Our customer mapping first (set when the user started Checkout), then the user ids our
    # Checkout sessions put on the session and the subscription's metadata.
    if folded.customer_id:
        user_id = await repo.user_id_of_customer(session, folded.customer_id)
        if user_id is not None:
            return user_id
    for hint in folded.user_hints:
        user_id = await repo.existing_user_id(session, hint)
        if user_id is not None:
            return user_id
    return None


async def _link_checkout(
    session: AsyncSession, event: StripeEvent, grace: timedelta
) -> uuid.UUID | None:
    """Remember the session's customer as its user's; fold again what waited for it."""
    done = checkout_completion(event.object)
    user_id = await repo.existing_user_id(session, done.user_id_hint)
    if user_id is None and done.customer_id:
        user_id = await repo.user_id_of_customer(session, done.customer_id)
    if user_id is None:
        log.warning("checkout_unmatched", event_id=event.id, customer=done.customer_id)
        return None
    if done.customer_id:
        stored = await repo.link_customer(session, user_id, done.customer_id)
        if stored != done.customer_id:
            log.warning("checkout_other_customer", user_id=str(user_id), customer=done.customer_id)
        for waiting in await repo.unlinked_subscription_ids(session, done.customer_id):
            if waiting != done.subscription_id:
                await refold(session, waiting, grace)
    return user_id
