"""Repair drift between our subscription rows and Stripe (``kiban billing reconcile``).

Webhooks can be missed (an endpoint down for longer than Stripe retries, an event type not
enabled, a same-second tie applied in the wrong order). Reconcile re-reads every subscription we
know of, and every subscription of every customer we created, and makes our rows say what Stripe
says as of the read. That is newer than any event created before the read, so the ordering guard
moves to the time of the read: an older event arriving afterwards is stale. An event applied
between the read and the repair (a webhook racing the reconcile) is newer than the read: the row
keeps it, and the reconcile leaves that subscription alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kiban.billing import repository as repo
from kiban.billing.handlers import apply_snapshot
from kiban.billing.snapshot import SubscriptionSnapshot, subscription_snapshot
from kiban.billing.stripe_gateway import StripeGateway
from kiban.core import clock
from kiban.core.db import session_scope
from kiban.models.billing import BillingSubscription


@dataclass(frozen=True)
class Change:
    """One subscription whose row did not match Stripe, and what changed."""

    subscription_id: str
    user_id: str | None
    fields: dict[str, tuple[object, object]]  # name -> (before, after)

    def describe(self) -> str:
        """One line for a terminal."""
        parts = ", ".join(
            f"{k}: {a} -> {b}" for k, a, b in ((k, *v) for k, v in self.fields.items())
        )
        return f"{self.subscription_id} (user {self.user_id or 'unknown'}): {parts}"


_COMPARED = (
    "stripe_status",
    "state",
    "price_id",
    "current_period_end",
    "cancel_at_period_end",
)


def _values(row: BillingSubscription) -> dict[str, object]:
    return {name: getattr(row, name) for name in _COMPARED}


async def repair(
    session: AsyncSession, snap: SubscriptionSnapshot, read_at: int, grace: timedelta
) -> Change | None:
    """Make the subscription's row say what ``snap`` (read from Stripe at ``read_at``) says."""
    row = await repo.lock_subscription(session, snap.id)
    if row.last_event_created is not None and row.last_event_created >= read_at:
        # An event created after the read is applied: the row is newer than the snapshot. In
        # the read's own second the order is unknown, and the event wins: it carried the whole
        # subscription as of its time, and a change after it brings its own event (while a
        # lost event would never be delivered again: the inbox has it).
        return None
    before = _values(row)
    if row.user_id is None and snap.customer_id:
        row.user_id = await repo.user_id_of_customer(session, snap.customer_id)
    row.stripe_customer_id = row.stripe_customer_id or snap.customer_id
    apply_snapshot(row, snap, created=read_at, event_id="reconcile", grace=grace)
    after = _values(row)
    fields = {k: (before[k], after[k]) for k in _COMPARED if before[k] != after[k]}
    if not fields:
        return None
    return Change(snap.id, str(row.user_id) if row.user_id else None, fields)


async def reconcile(
    sessionmaker: async_sessionmaker[AsyncSession], gateway: StripeGateway, grace: timedelta
) -> tuple[list[Change], list[str]]:
    """Re-read subscriptions from Stripe and repair our rows; returns (changes, not found)."""
    async with session_scope(sessionmaker) as session:
        known = [row.stripe_subscription_id for row in await repo.subscriptions(session)]
        customers = [c.stripe_customer_id for c in await repo.customers(session)]
    fetched: dict[str, tuple[SubscriptionSnapshot, int]] = {}  # with the time of its read
    missing: list[str] = []
    for customer_id in customers:
        read_at = int(clock.timestamp())
        for obj in await gateway.list_subscriptions(customer_id):
            snap = subscription_snapshot(obj)
            if snap is not None:
                fetched[snap.id] = (snap, read_at)
    for sub_id in known:
        if sub_id in fetched:
            continue
        read_at = int(clock.timestamp())
        current = await gateway.retrieve_subscription(sub_id)
        snap = subscription_snapshot(current) if current is not None else None
        if snap is None:
            missing.append(sub_id)  # another account or mode (test/live)? reported, not touched
        else:
            fetched[snap.id] = (snap, read_at)
    changes: list[Change] = []
    for snap, read_at in fetched.values():
        async with session_scope(sessionmaker) as session:
            change = await repair(session, snap, read_at, grace)
        if change is not None:
            changes.append(change)
    return changes, missing
