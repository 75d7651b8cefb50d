"""The usage log: a filtered, keyset-paginated view of ledger rows, and the CSV export."""

from __future__ import annotations

import contextlib
import csv
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from kiban.admin.analytics import Window
from kiban.admin.schemas import LogEntry, LogPage
from kiban.models import UsageRecord
from kiban.usage import (
    EXPORT_COLUMNS,
    records_with_emails,
    stream_export,
)
from kiban.usage import distinct_values as ledger_distinct_values
from kiban.usage import export_query as ledger_export_query

U = UsageRecord

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
    rows, more = await records_with_emails(session, where.clauses(), before=before, limit=limit)
    entries = []
    for record, email in rows:
        entry = LogEntry.model_validate(record)
        entry.email = email
        entries.append(entry)
    next_before = entries[-1].id if more else None
    return LogPage(entries=entries, next_before=next_before)


async def distinct_values(session: AsyncSession, window: Window) -> dict[str, list[str]]:
    """The models, endpoints and statuses seen in a window (the table's filter choices)."""
    return await ledger_distinct_values(session, window.filters())


def export_query(window: Window) -> Select[Any]:
    return ledger_export_query(window.filters())


async def export_csv(engine: AsyncEngine, window: Window) -> AsyncIterator[bytes]:
    """The window's ledger rows as CSV, streamed in batches from a server-side cursor.

    It opens its own connection: the response body is produced after the request's session has
    been committed and closed. Memory stays bounded by one batch whatever the row count.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    yield buffer.getvalue().encode()
    batches = stream_export(engine, window.filters(), batch_rows=EXPORT_BATCH_ROWS)
    async with contextlib.aclosing(batches):
        async for batch in batches:
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
