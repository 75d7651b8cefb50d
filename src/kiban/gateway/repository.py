"""Ledger queries for ``GET /ai/logs``: newest first, keyset (cursor) pagination."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.gateway.exceptions import InvalidRequest
from kiban.models import UsageRecord


@dataclass(frozen=True)
class LogFilter:
    user_id: uuid.UUID | None  # None: everyone's (admins only)
    endpoint: str | None = None
    model: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def encode_cursor(record: UsageRecord) -> str:
    """An opaque position after ``record`` in newest-first order."""
    raw = f"{record.created_at.astimezone(UTC).isoformat()}|{record.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The position in a cursor (a 400 ``invalid_cursor`` if it was not made by us)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, ident = raw.partition("|")
        at = datetime.fromisoformat(stamp)
        if at.tzinfo is None:
            raise ValueError("naive")
        position = int(ident)
        if not 0 < position < 2**63:  # a BIGINT id: anything else would fail in the database
            raise ValueError("out of range")
        return at, position
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            "The cursor is not valid; pass the next_cursor of a previous page.",
            param="cursor",
            code="invalid_cursor",
        ) from exc


async def list_records(
    session: AsyncSession, filters: LogFilter, *, limit: int, cursor: str | None
) -> tuple[Sequence[UsageRecord], str | None]:
    """A page of records and the cursor of the next page (None at the end)."""
    query = select(UsageRecord)
    conditions = []
    if filters.user_id is not None:
        conditions.append(UsageRecord.user_id == filters.user_id)
    if filters.endpoint:
        conditions.append(UsageRecord.endpoint == filters.endpoint)
    if filters.model:
        conditions.append(UsageRecord.model == filters.model)
    if filters.status:
        conditions.append(UsageRecord.status == filters.status)
    if filters.since:
        conditions.append(UsageRecord.created_at >= filters.since)
    if filters.until:
        conditions.append(UsageRecord.created_at < filters.until)
    if cursor:
        at, ident = decode_cursor(cursor)
        conditions.append(
            or_(
                UsageRecord.created_at < at,
                and_(UsageRecord.created_at == at, UsageRecord.id < ident),
            )
        )
    if conditions:
        query = query.where(*conditions)
    query = query.order_by(UsageRecord.created_at.desc(), UsageRecord.id.desc()).limit(limit + 1)
    rows = (await session.scalars(query)).all()
    if len(rows) > limit:
        return rows[:limit], encode_cursor(rows[limit - 1])
    return rows, None
