"""The usage log: a filtered, keyset-paginated view of ledger rows, and the CSV export."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from kiban.admin.analytics import Window
from kiban.admin.schemas import LogEntry, LogPage
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
    "estimated_cost",
    "response_time_ms",
    "time_to_first_token_ms",
    "source_ids",
)
EXPORT_BATCH_ROWS = 2_000
MAX_ID = 2**63 - 1  # a BIGINT: a larger cursor would overflow the driver (a 500)


@dataclass(frozen=True)
class LogFilter:
    """What the usage-log table is narrowed to (every field optional)."""

    window: Window | None = None
    user_id: uuid.UUID | None = None
    models: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()

    def clauses(self) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = list(self.window.filters()) if self.window else []
        if self.user_id is not None:
            clauses.append(U.user_id == self.user_id)
        if self.models:
            clauses.append(U.model.in_(self.models))
        if self.endpoints:
            clauses.append(U.endpoint.in_(self.endpoints))
        if self.statuses:
            clauses.append(U.status.in_(self.statuses))
        return clauses


async def usage_page(
    session: AsyncSession, where: LogFilter, *, before: int | None = None, limit: int = 50
) -> LogPage:
    """One page of ledger rows, newest first; ``before`` is the previous page's cursor."""
    query = (
        select(U, User.email)
        .outerjoin(User, User.id == U.user_id)
        .where(*where.clauses())
        .order_by(U.id.desc())
        .limit(limit + 1)
    )
    if before is not None:
        query = query.where(U.id < before)
    rows = (await session.execute(query)).all()
    entries = []
    for record, email in rows[:limit]:
        entry = LogEntry.model_validate(record)
        entry.email = email
        entries.append(entry)
    next_before = entries[-1].id if len(rows) > limit else None
    return LogPage(entries=entries, next_before=next_before)


async def distinct_values(session: AsyncSession, window: Window) -> dict[str, list[str]]:
    """The models, endpoints and statuses seen in a window (the table's filter choices)."""
    values: dict[str, list[str]] = {}
    for name, column in (("model", U.model), ("endpoint", U.endpoint), ("status", U.status)):
        rows = await session.execute(
            select(column).where(*window.filters()).group_by(column).order_by(column)
        )
        values[name] = [str(v) for v in rows.scalars()]
    return values


def export_query(window: Window) -> Select[Any]:
    columns = [getattr(U, name) for name in EXPORT_COLUMNS]
    return select(*columns).where(*window.filters()).order_by(U.id)


async def export_csv(engine: AsyncEngine, window: Window) -> AsyncIterator[bytes]:
    """The window's ledger rows as CSV, streamed in batches from a server-side cursor.

    It opens its own connection: the response body is produced after the request's session has
    been committed and closed. Memory stays bounded by one batch whatever the row count.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    yield buffer.getvalue().encode()
    async with engine.connect() as conn:
        result = await conn.stream(
            export_query(window).execution_options(yield_per=EXPORT_BATCH_ROWS)
        )
        async for batch in result.partitions():
            buffer.seek(0)
            buffer.truncate()
            writer.writerows(_csv_row(row) for row in batch)
            yield buffer.getvalue().encode()


def _csv_row(row: Any) -> list[Any]:
    out: list[Any] = []
    for name, value in zip(EXPORT_COLUMNS, row, strict=True):
        if value is None:
            out.append("")
        elif name == "created_at":
            out.append(value.isoformat())
        elif name == "source_ids":
            out.append(orjson.dumps(value).decode())
        elif name == "estimated_cost":
            out.append(format(value, "f"))
        else:
            out.append(value)
    return out
