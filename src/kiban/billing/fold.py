"""A subscription's state as a function of its events: folded afresh, in Stripe's order.

Stripe delivers events late, more than once and in any order, so no event is judged against
whatever happened to arrive before it. Every event about a subscription stays in the inbox, and
on each delivery the subscription's state is folded again from all of them, sorted the way Stripe
created them (``stripe_order``). The same set of events gives the same state, whatever order,
duplication or delay brought them. See docs/decisions/0043.

Each fact has one authority:

- status, price, period, cancellation and end: the subscription object, as the
  ``customer.subscription.*`` events carry it (also a Checkout session whose subscription is
  expanded, and ``kiban billing reconcile``'s read of it from the API);
- a renewal payment's failure and recovery: invoices. ``invoice.payment_failed`` moves a renewing
  subscription to ``past_due`` and its time, the first failure's, starts the grace period; a retry
  that fails again keeps it. ``invoice.paid`` ends it. A failed *first* payment changes nothing:
  the subscription is still ``incomplete`` and its own events say what comes of it;
- whose it is: the customer and the user id hints the events carry (resolved by the handler).

This module is pure: no database, no clock. ``billing.handlers`` loads the events and stores the
result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kiban.billing.snapshot import (
    SubscriptionSnapshot,
    checkout_completion,
    object_id,
    subscription_snapshot,
)

SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        # Optional to enable: they carry the whole subscription like the three above.
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.trial_will_end",
    }
)
# Stripe sends both for a paid invoice; localstripe and older integrations only the second.
INVOICE_PAID_EVENTS = frozenset({"invoice.paid", "invoice.payment_succeeded"})
INVOICE_FAILED_EVENT = "invoice.payment_failed"
INVOICE_EVENTS = INVOICE_PAID_EVENTS | {INVOICE_FAILED_EVENT}
CHECKOUT_COMPLETED_EVENT = "checkout.session.completed"
# Not Stripe's: ``kiban billing reconcile`` stores what it read from the API as an event of this
# type, created at the time of the read, so that a read is one more fact in the fold.
READ_EVENT = "kiban.subscription.read"
HANDLED_EVENTS = SUBSCRIPTION_EVENTS | INVOICE_EVENTS | {CHECKOUT_COMPLETED_EVENT, READ_EVENT}

RENEWING_STATUSES = frozenset({"active", "trialing"})
# Statuses after which no payment brings the subscription back (a new one is created instead).
FINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})

# Within one second (``created`` has one-second resolution) a status never moves backwards.
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
# Within one second, a subscription is created before anything else happens to it, a payment
# that fails comes before one that succeeds (the retry that recovered), and deletion is last.
_TYPE_RANK = {
    "customer.subscription.created": 0,
    INVOICE_FAILED_EVENT: 1,
    "customer.subscription.deleted": 3,
}

# Outcomes recorded on each inbox row.
APPLIED = "applied"  # folded into its subscription's state, in Stripe's order
IGNORED = "ignored"  # nothing for kiban to do (``detail`` says why)
PENDING = "pending"  # waits for the subscription's own event (applied when it arrives)
UNMATCHED = "unmatched"  # folded, but whose subscription it is is not known yet
FAILED = "failed"  # applying it raised; a redelivery or ``re-apply`` tries again
OUTCOMES = (APPLIED, IGNORED, PENDING, UNMATCHED, FAILED)


@dataclass(frozen=True)
class Delivered:
    """An event from the inbox, as the fold reads it."""

    id: str
    type: str
    created: int
    object: Mapping[str, Any]
    received: int = 0  # the inbox's row id: the order of arrival, the last of the tie rules


def snapshot_of(event: Delivered) -> SubscriptionSnapshot | None:
    """The subscription object an event carries, if it carries one."""
    if event.type in SUBSCRIPTION_EVENTS or event.type == READ_EVENT:
        return subscription_snapshot(event.object)
    if event.type == CHECKOUT_COMPLETED_EVENT:
        expanded = checkout_completion(event.object).subscription
        return subscription_snapshot(expanded) if expanded is not None else None
    return None


def stripe_order(
    event: Delivered, snap: SubscriptionSnapshot | None
) -> tuple[int, int, int, int, int]:
    """The sort key of Stripe's order: ``created``, then tie rules for events of one second.

    ``snap`` is the subscription object the event carries (``snapshot_of``). In one second: a
    reconcile read comes first (an event of the read's own second may be newer than the read);
    a status never moves backwards in the lifecycle; then ``_TYPE_RANK``. Two events those
    rules cannot order keep the order they arrived in: Stripe's real same-second pairs (an
    invoice and the subscription update it causes) agree, so this decides only hand-made
    sequences, and ``kiban billing reconcile`` repairs a tie decided wrongly.
    """
    rank = _LIFECYCLE_RANK.get(snap.status, 1) if snap is not None else 1
    return (
        event.created,
        0 if event.type == READ_EVENT else 1,
        rank,
        _TYPE_RANK.get(event.type, 2),
        event.received,
    )


@dataclass
class Folded:
    """What a subscription's events say, folded in Stripe's order."""

    status: str | None = None  # None: no event carrying the subscription itself yet
    price_id: str | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    cancel_at_period_end: bool = False
    ended_at: datetime | None = None
    past_due_since: datetime | None = None  # the first failed payment of the unpaid renewal
    customer_id: str | None = None
    user_hints: list[str] = field(default_factory=list)  # user ids our Checkout put on objects
    newest: Delivered | None = None  # the last event in the order that was not ignored
    # Event id -> (outcome, why): APPLIED, IGNORED, FAILED (its payload could not be read), or
    # PENDING for an event that came (in the order) before any subscription object.
    # ``handlers`` turns these into final outcomes.
    outcomes: dict[str, tuple[str, str | None]] = field(default_factory=dict)


def _at(created: int) -> datetime:
    return datetime.fromtimestamp(created, UTC)


def _take_snapshot(state: Folded, snap: SubscriptionSnapshot, created: int) -> None:
    if snap.status == "past_due":
        if state.status != "past_due" or state.past_due_since is None:
            state.past_due_since = _at(created)
    else:
        state.past_due_since = None
    state.status = snap.status
    state.price_id = snap.price_id or state.price_id
    state.current_period_start = snap.current_period_start or state.current_period_start
    state.current_period_end = snap.current_period_end or state.current_period_end
    state.cancel_at_period_end = snap.cancel_at_period_end
    state.ended_at = snap.ended_at
    state.customer_id = snap.customer_id or state.customer_id
    if snap.user_id_hint:
        state.user_hints.append(snap.user_id_hint)


def _take_invoice(state: Folded, event: Delivered) -> str | None:
    """Apply a paid or failed invoice; returns why it changes nothing, or None."""
    if state.status in FINAL_STATUSES:
        return f"the subscription has ended ({state.status})"
    if event.type in INVOICE_PAID_EVENTS:
        if state.status in ("past_due", "unpaid"):
            state.status, state.past_due_since = "active", None
        return None
    if event.object.get("billing_reason") == "subscription_create" or state.status == "incomplete":
        return "a failed first payment leaves the subscription incomplete"
    if state.status in RENEWING_STATUSES:
        state.status, state.past_due_since = "past_due", _at(event.created)
    return None  # past_due or unpaid already: the first failure's time stands


def _read(event: Delivered) -> tuple[SubscriptionSnapshot | None, str | None]:
    # A payload our readers cannot make sense of fails alone, not its whole subscription.
    try:
        return snapshot_of(event), None
    except Exception as e:  # the reason is kept on the event, for its operator
        return None, f"{type(e).__name__}: {e}"


def fold(events: Iterable[Delivered]) -> Folded:
    """The subscription's state from its events, in Stripe's order (duplicates count once)."""
    read = {event.id: (event, *_read(event)) for event in events}
    state = Folded()
    for event, snap, error in sorted(read.values(), key=lambda r: stripe_order(r[0], r[1])):
        if error is not None:
            state.outcomes[event.id] = (FAILED, error)
            continue
        customer = object_id(event.object.get("customer"))
        why: str | None = None
        if event.type == CHECKOUT_COMPLETED_EVENT:
            hint = checkout_completion(event.object).user_id_hint
            if hint:
                state.user_hints.insert(0, hint)  # the session names its user most directly
        if snap is not None:
            _take_snapshot(state, snap, event.created)
        elif event.type in INVOICE_EVENTS:
            if state.status is None:
                state.outcomes[event.id] = (PENDING, "no state of the subscription before it")
                state.customer_id = state.customer_id or customer
                continue
            why = _take_invoice(state, event)
        elif event.type != CHECKOUT_COMPLETED_EVENT:
            why = "the subscription object has no id or status"
        if why is not None:
            state.outcomes[event.id] = (IGNORED, why)
            continue
        state.customer_id = state.customer_id or customer
        state.outcomes[event.id] = (APPLIED, None)
        state.newest = event
    return state
