"""Which plan a user has right now, and the quota period it counts against.

``resolve_entitlement`` is the one place that decides. Today: the plan an admin set on the user
(``users.plan``), else the catalog's default plan, counted per calendar month (UTC). Billing
extends it with the subscription state: a subscription that grants paid access right now (its
state allows it and ``current_period_end > now``) decides the plan, and its billing period is the
quota period. It runs on every AI request, so it must stay cheap: at most one indexed query.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from kiban.billing.plans import Plan, PlanCatalog
from kiban.billing.state import paid_subscription
from kiban.models import User

EntitlementSource = Literal["default", "admin", "subscription"]


@dataclass(frozen=True)
class Entitlement:
    """A user's plan and current quota period ``[period_start, period_end)``."""

    plan: Plan
    period_start: datetime
    period_end: datetime
    source: EntitlementSource = "default"


def calendar_month(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month holding ``now``: ``[first instant, first instant of next month)``."""
    now = now.astimezone(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


async def resolve_entitlement(
    session: AsyncSession,
    user: User,
    now: datetime,
    *,
    catalog: PlanCatalog,
    grace: timedelta,
    may_be_subscribed: bool | None = None,
) -> Entitlement:
    """The plan the user has at ``now`` and the quota period ``now`` falls in.

    ``catalog`` and ``grace`` are the app's (``app.state.plans``, the settings' grace): passed in,
    never read from a process global.
    """
    # Billing: a subscription granting paid access now (state allows it, period not over)
    # decides the plan, and its billing period is the quota period. ``may_be_subscribed=False``
    # proves there is none, so most requests (free users) skip this query: the API-key path
    # derives it from ``models.billing.paid_access_until`` (read with the key, or from the
    # API-key cache, which every subscription write invalidates within 1 s), compared with the
    # request's time, so a period that ends is never carried past its end.
    if may_be_subscribed is False:
        return unsubscribed_entitlement(user, now, catalog=catalog)
    sub = await paid_subscription(session, user.id, now, grace)
    plan = catalog.for_price(sub.price_id) if sub is not None and sub.price_id else None
    if sub is not None and plan is not None and sub.current_period_end is not None:
        sub_start = sub.current_period_start or calendar_month(now)[0]
        return Entitlement(plan, sub_start, sub.current_period_end, source="subscription")
    return unsubscribed_entitlement(user, now, catalog=catalog)


def unsubscribed_entitlement(user: User, now: datetime, *, catalog: PlanCatalog) -> Entitlement:
    """The entitlement of a user known to have no paid subscription at ``now`` (no query)."""
    start, end = calendar_month(now)
    if user.plan is not None and user.plan in catalog.plans:
        return Entitlement(catalog.plans[user.plan], start, end, source="admin")
    return Entitlement(catalog.default, start, end, source="default")
