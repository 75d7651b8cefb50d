"""Quota consumption per plan: how many of a plan's active users are near or at their limit.

Computed from the usage ledger and the plans, not from the quota counters: the counters may live
in Redis (``KIBAN_QUOTA_BACKEND``) and hold reservations in flight, while the ledger is the
settled record of every request on every backend. Each user's plan and period come from
``billing.entitlements.resolve_entitlement`` (the one place that decides them); extra tokens an
admin granted for the period are read from ``quota_periods``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.admin.schemas import PlanQuota, QuotaConsumption
from kiban.billing import Entitlement, PlanCatalog, resolve_entitlement
from kiban.models import UsageRecord, UsageRollupUserDaily, UsageStatus, User
from kiban.models.billing import may_have_paid_access
from kiban.models.quota import QuotaPeriod

U = UsageRecord
D = UsageRollupUserDaily
NEAR_LIMIT = 0.8
CHUNK = 5_000  # ids per IN list
# A quota period is at most a month (calendar month or a monthly subscription period).
LOOKBACK = timedelta(days=32)


@dataclass(frozen=True)
class UserQuota:
    """One user's standing in their current quota period."""

    user_id: uuid.UUID
    entitlement: Entitlement
    used_tokens: int
    extra_tokens: int

    @property
    def limit(self) -> int:
        return self.entitlement.plan.monthly_tokens + self.extra_tokens

    @property
    def share(self) -> float:
        return self.used_tokens / self.limit if self.limit else 1.0


async def user_quotas(
    session: AsyncSession,
    users: Sequence[User],
    now: datetime,
    catalog: PlanCatalog,
    grace: timedelta,
) -> list[UserQuota]:
    """Tokens used (settled, from the ledger) against each user's allowance for this period.

    A bounded number of queries whatever the number of users: ids go in chunks (PostgreSQL's
    drivers take at most 32,767 parameters), and only users who may hold a paid subscription
    cost a query each to resolve (the others' entitlement needs none).
    """
    if not users:
        return []
    subscribed: set[uuid.UUID] = set()
    for ids in _chunks([u.id for u in users]):
        subscribed.update(
            await session.scalars(
                select(User.id).where(User.id.in_(ids), may_have_paid_access(User.id, now))
            )
        )
    entitlements = {
        u.id: await resolve_entitlement(
            session, u, now, catalog=catalog, grace=grace, may_be_subscribed=u.id in subscribed
        )
        for u in users
    }
    by_start: dict[datetime, list[uuid.UUID]] = defaultdict(list)
    for user_id, ent in entitlements.items():
        by_start[ent.period_start].append(user_id)
    used: dict[uuid.UUID, int] = {}
    for start, members in by_start.items():
        for ids in _chunks(members):
            rows = await session.execute(
                select(U.user_id, func.sum(U.total_tokens))
                .where(
                    U.user_id.in_(ids),
                    U.created_at >= start,
                    U.created_at <= now,
                    U.status != UsageStatus.REJECTED,
                )
                .group_by(U.user_id)
            )
            used.update({r[0]: int(r[1] or 0) for r in rows if r[0] is not None})
    extra: dict[uuid.UUID, int] = {}
    for ids in _chunks(list(entitlements)):
        extras = await session.execute(
            select(QuotaPeriod.user_id, QuotaPeriod.period_start, QuotaPeriod.extra_tokens).where(
                QuotaPeriod.user_id.in_(ids)
            )
        )
        extra.update(
            (r.user_id, int(r.extra_tokens))
            for r in extras
            if r.period_start == entitlements[r.user_id].period_start
        )
    return [
        UserQuota(uid, ent, used.get(uid, 0), extra.get(uid, 0))
        for uid, ent in entitlements.items()
    ]


def _chunks(ids: Sequence[uuid.UUID]) -> list[Sequence[uuid.UUID]]:
    return [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)]


async def quota_consumption(
    session: AsyncSession,
    now: datetime,
    catalog: PlanCatalog,
    grace: timedelta,
    threshold: float = NEAR_LIMIT,
) -> QuotaConsumption:
    """Per plan: users active this period, tokens used, and how many are near or at the limit."""
    # Users with any usage in the lookback, from the per-user daily rollup (a whole day more at
    # most: the period filter below decides). A subquery, so no id list is sent back.
    since = (now - LOOKBACK).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    active = select(D.user_id).where(D.day >= since)
    users = (await session.scalars(select(User).where(User.id.in_(active)))).all()
    quotas = [
        q for q in await user_quotas(session, users, now, catalog, grace) if q.used_tokens > 0
    ]
    plans: dict[str, list[UserQuota]] = {name: [] for name in catalog.plans}
    for q in quotas:
        plans.setdefault(q.entitlement.plan.name, []).append(q)
    rows = []
    for name, members in plans.items():
        near = sum(1 for q in members if q.share >= threshold)
        plan = catalog.plans.get(name)
        rows.append(
            PlanQuota(
                plan=name,
                monthly_tokens=plan.monthly_tokens if plan else None,
                users_with_usage=len(members),
                tokens_used=sum(q.used_tokens for q in members),
                near_limit=near,
                at_limit=sum(1 for q in members if q.used_tokens >= q.limit),
                near_limit_share=near / len(members) if members else None,
            )
        )
    return QuotaConsumption(at=now, threshold=threshold, source="ledger", plans=rows)
