"""Repair drift between our subscription rows and Stripe (``kiban billing reconcile``).

Webhooks can be missed (an endpoint down for longer than Stripe retries, an event type not
enabled, a same-second tie folded in the wrong order). Reconcile re-reads every subscription we
know of, and every subscription of every customer we created, and stores each read in the inbox
as one more event (``kiban.subscription.read``, created at the time of the read) before folding
the subscription again. The read is newer than every event created before it, whenever those
arrive; an event created after the read (a webhook racing the reconcile), or in the read's own
second, is newer than the read and wins over it. Reconcile then applies again whatever is still
pending, unmatched or failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kiban.billing import repository as repo
from kiban.billing.fold import READ_EVENT
from kiban.billing.handlers import refold
from kiban.billing.inbox import reapply_waiting
from kiban.billing.snapshot import subscription_snapshot
from kiban.billing.stripe_client import StripeClient
from kiban.billing.webhooks import StripeEvent
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


def read_event(obj: dict[str, Any], read_at: int) -> StripeEvent:
    """A read of a subscription from Stripe's API, as an inbox event of its own."""
    sub_id = str(obj.get("id"))
    payload = {
        "id": f"kiban_read_{sub_id}_{read_at}",
        "object": "event",
        "type": READ_EVENT,
        "created": read_at,
        "data": {"object": obj},
        "livemode": bool(obj.get("livemode", False)),
    }
    return StripeEvent(
        id=str(payload["id"]),
        type=READ_EVENT,
        created=read_at,
        livemode=bool(payload["livemode"]),
        object=obj,
        payload=payload,
    )


async def repair(
    session: AsyncSession, obj: dict[str, Any], read_at: int, grace: timedelta
) -> Change | None:
    """Fold the subscription ``obj`` (read from Stripe at ``read_at``) into our row."""
    event = read_event(obj, read_at)
    row = await repo.lock_subscription(session, str(obj["id"]))
    before = _values(row)
    if await repo.record_event(session, event, str(obj["id"])):
        await refold(session, str(obj["id"]), grace)
    after = _values(row)
    fields = {k: (before[k], after[k]) for k in _COMPARED if before[k] != after[k]}
    if not fields:
        return None
    return Change(str(obj["id"]), str(row.user_id) if row.user_id else None, fields)


async def reconcile(
    sessionmaker: async_sessionmaker[AsyncSession], stripe: StripeClient, grace: timedelta
) -> tuple[list[Change], list[str], list[tuple[str, str, str]]]:
    """Re-read subscriptions from Stripe, repair our rows and apply again what waits.

    Returns (changes, subscriptions Stripe does not know, events whose outcome changed).
    """
    async with session_scope(sessionmaker) as session:
        known = [row.stripe_subscription_id for row in await repo.subscriptions(session)]
        customers = [c.stripe_customer_id for c in await repo.customers(session)]
    fetched: dict[str, tuple[dict[str, Any], int]] = {}  # with the time of its read
    missing: list[str] = []
    for customer_id in customers:
        read_at = int(clock.timestamp())
        for obj in await stripe.list_subscriptions(customer_id):
            if subscription_snapshot(obj) is not None:
                fetched[str(obj["id"])] = (obj, read_at)
    for sub_id in known:
        if sub_id in fetched:
            continue
        read_at = int(clock.timestamp())
        current = await stripe.retrieve_subscription(sub_id)
        if current is None or subscription_snapshot(current) is None:
            missing.append(sub_id)  # another account or mode (test/live)? reported, not touched
        else:
            fetched[sub_id] = (current, read_at)
    changes: list[Change] = []
    for obj, read_at in fetched.values():
        async with session_scope(sessionmaker) as session:
            change = await repair(session, obj, read_at, grace)
        if change is not None:
            changes.append(change)
    reapplied = await reapply_waiting(sessionmaker, grace)
    return changes, missing, reapplied
