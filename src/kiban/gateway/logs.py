"""``GET /ai/logs`` paging: an opaque cursor over the ledger's newest-first order.

The query itself is the usage package's (``kiban.usage.newest_records``).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from kiban.gateway.exceptions import InvalidRequest
from kiban.models import UsageRecord
from kiban.usage import RecordFilter, newest_records


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
    session: AsyncSession, filters: RecordFilter, *, limit: int, cursor: str | None
) -> tuple[Sequence[UsageRecord], str | None]:
    """A page of records and the cursor of the next page (None at the end)."""
    after = decode_cursor(cursor) if cursor else None
    rows, more = await newest_records(session, filters, limit=limit, after=after)
    return rows, encode_cursor(rows[-1]) if more else None
