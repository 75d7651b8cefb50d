"""Top users of a window: the heaviest by cost, tokens or requests.

Ties are broken by the other figures: by cost, then requests, then tokens; by tokens, then
requests, then cost; by requests, then tokens, then cost; and last by user id, so the order is
stable.

Whole days come from the per-user daily rollup, the window's partial days from the ledger, ranked
together in one ``UNION ALL`` query (``kiban.usage.rollups``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.admin.analytics import Window, between, cost_units, units_to_usd, without_jit
from kiban.admin.schemas import RankBy, TopUser, TopUsers
from kiban.models import UsageRecord, UsageRollupUserDaily, User
from kiban.usage import DAY, split_window

U = UsageRecord
D = UsageRollupUserDaily


async def top_users(session: AsyncSession, window: Window, by: RankBy, limit: int) -> TopUsers:
    """The users with the most cost, tokens or requests in the window."""
    # Whole days from the per-user rollup, the edges from the ledger, ranked together. The join
    # to users turns the rollup's "no user" (and a deleted user, whose ledger rows lost their
    # user_id) into NULL, as in the ledger.
    split = split_window(window.start, window.end, DAY)
    parts: list[Select[Any, int, int, Any]] = []
    if split.whole:
        parts.append(
            select(
                D.user_id.label("user_id"),
                D.requests.label("requests"),
                D.total_tokens.label("total_tokens"),
                D.cost_units.label("cost_units"),
            ).where(D.day >= split.whole[0], D.day < split.whole[1])
        )
    if split.edges:
        parts.append(
            select(
                U.user_id.label("user_id"),
                func.count().label("requests"),
                func.sum(U.total_tokens).label("total_tokens"),
                func.sum(cost_units()).label("cost_units"),
            )
            .where(between(U.created_at, split.edges))
            .group_by(U.user_id)
        )
    both = union_all(*parts).subquery()
    user = User.id.label("user_id")
    requests = func.sum(both.c.requests).label("requests")
    tokens = func.sum(both.c.total_tokens).label("tokens")
    cost = func.sum(both.c.cost_units).label("cost")
    order = {
        RankBy.COST: (cost, requests, tokens),
        RankBy.TOKENS: (tokens, requests, cost),
        RankBy.REQUESTS: (requests, tokens, cost),
    }[by]
    await without_jit(session)
    rows = (
        await session.execute(
            select(user, requests, tokens, cost)
            .select_from(both.outerjoin(User, User.id == both.c.user_id))
            .group_by(User.id)
            .order_by(*(func.coalesce(figure, 0).desc() for figure in order), User.id)
            .limit(limit)
        )
    ).all()
    ids = [r.user_id for r in rows if r.user_id is not None]
    emails = await user_emails(session, ids)
    users = [
        TopUser(
            user_id=r.user_id,
            email=emails.get(r.user_id) if r.user_id else None,
            requests=int(r.requests),
            total_tokens=int(r.tokens or 0),
            cost_usd=units_to_usd(r.cost),
        )
        for r in rows
    ]
    return TopUsers(start=window.start, end=window.end, by=by, users=users)


async def user_emails(session: AsyncSession, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Emails of the given users, by id."""
    if not ids:
        return {}
    rows = await session.execute(select(User.id, User.email).where(User.id.in_(ids)))
    return {r.id: r.email for r in rows}
