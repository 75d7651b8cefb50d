"""Reads of the usage ledger: newest-first pages, the values a window holds, the export's rows.

The callers shape what they read: ``/ai/logs`` wraps a page in its opaque cursor
(``kiban.gateway.logs``), the admin usage log and its CSV export are in ``kiban.admin.usage_log``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from kiban.models import UsageRecord, User

U = UsageRecord

EXPORT_COLUMNS = (
    "id",
    "request_id",
    "created_at",
    "user_id",
    "api_key_id",
    "plan",
    "endpoint",
    "model",
    "provider",
    "streamed",
    "status",
    "error_code",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "deployment",
    "attempts",
    "cache_write_tokens",
    "estimated_cost",
    "response_time_ms",
    "time_to_first_token_ms",
    "source_ids",
)


@dataclass(frozen=True)
class RecordFilter:
    """Which records a ``GET /ai/logs`` page is taken from (each field optional)."""

    user_id: uuid.UUID | None  # None: everyone's (admins only)
    endpoint: str | None = None
    model: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        if self.user_id is not None:
            conditions.append(U.user_id == self.user_id)
        if self.endpoint:
            conditions.append(U.endpoint == self.endpoint)
        if self.model:
            conditions.append(U.model == self.model)
        if self.status:
            conditions.append(U.status == self.status)
        if self.since:
            conditions.append(U.created_at >= self.since)
        if self.until:
            conditions.append(U.created_at < self.until)
        return conditions


async def newest_records(
    session: AsyncSession,
    filters: RecordFilter,
    *,
    limit: int,
    after: tuple[datetime, int] | None = None,
) -> tuple[Sequence[UsageRecord], bool]:
    """Up to ``limit`` records, newest first (by time, then id), strictly after the position
    ``after`` = (created_at, id) in that order; and whether more follow."""
    query = select(U)
    conditions = filters.clauses()
    if after is not None:
        at, ident = after
        conditions.append(or_(U.created_at < at, and_(U.created_at == at, U.id < ident)))
    if conditions:
        query = query.where(*conditions)
    query = query.order_by(U.created_at.desc(), U.id.desc()).limit(limit + 1)
    rows = (await session.scalars(query)).all()
    return rows[:limit], len(rows) > limit


async def records_with_emails(
    session: AsyncSession,
    clauses: Sequence[ColumnElement[bool]],
    *,
    before: int | None = None,
    limit: int = 50,
) -> tuple[Sequence[Row[UsageRecord, str]], bool]:
    """Up to ``limit`` (record, its user's email) pairs, by id newest first, below the id
    ``before``; and whether more follow."""
    query = (
        select(U, User.email)
        .outerjoin(User, User.id == U.user_id)
        .where(*clauses)
        .order_by(U.id.desc())
        .limit(limit + 1)
    )
    if before is not None:
        query = query.where(U.id < before)
    rows = (await session.execute(query)).all()
    return rows[:limit], len(rows) > limit


async def distinct_values(
    session: AsyncSession, clauses: Sequence[ColumnElement[bool]]
) -> dict[str, list[str]]:
    """The models, endpoints and statuses of the records the clauses select, each sorted."""
    values: dict[str, list[str]] = {}
    for name, column in (("model", U.model), ("endpoint", U.endpoint), ("status", U.status)):
        rows = await session.execute(
            select(column).where(*clauses).group_by(column).order_by(column)
        )
        values[name] = [str(v) for v in rows.scalars()]
    return values


def export_query(clauses: Sequence[ColumnElement[bool]]) -> Select[Any]:
    """The ``EXPORT_COLUMNS`` of the records the clauses select, oldest id first."""
    columns = [getattr(U, name) for name in EXPORT_COLUMNS]
    return select(*columns).where(*clauses).order_by(U.id)


async def stream_export(
    engine: AsyncEngine, clauses: Sequence[ColumnElement[bool]], *, batch_rows: int
) -> AsyncGenerator[Sequence[Row[Any]]]:
    """``export_query``'s rows in batches, from a server-side cursor on a connection of its own.

    Memory stays bounded by one batch whatever the row count.
    """
    async with engine.connect() as conn:
        result = await conn.stream(export_query(clauses).execution_options(yield_per=batch_rows))
        async for batch in result.partitions():
            yield batch
