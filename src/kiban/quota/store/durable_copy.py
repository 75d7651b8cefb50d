"""The Redis store's durable copy in the database: settlements drained from Redis's settle
stream, a batch in ONE transaction, each counted once per reservation id; and the consistent
snapshot a re-seed of Redis starts from.

A settlement's id goes into ``quota_settlements`` first (``ON CONFLICT DO NOTHING RETURNING``):
only the ids that were new add their usage to ``quota_periods.used_tokens`` and insert their
ledger record and rollups, so a batch delivered twice (a drainer that died after the commit and
before its XACK, an entry claimed by a second process) changes nothing the second time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from kiban.core import clock
from kiban.core.metrics import LEDGER_WRITTEN
from kiban.quota.store.base import QuotaState
from kiban.quota.store.sql import SqlQuotaStore
from kiban.quota.store.sql_statements import (
    STATE_COLUMNS,
    P,
    S,
    create_period,
    record_settlement,
    state_of,
)
from kiban.usage import write_records

_CHUNK = 500  # ids per IN (…) list: far under either database's parameter limit


@dataclass(frozen=True)
class Settlement:
    """One settle as the Redis script recorded it: everything the durable copy needs."""

    id: uuid.UUID  # the reservation's
    user_id: uuid.UUID
    period_start: datetime
    period_end: datetime
    tokens: int
    cost_nanos: int
    record: dict[str, Any] | None  # the call's ledger record


async def write_settlements(
    db: SqlQuotaStore, settlements: list[Settlement], *, count_usage: bool = True
) -> list[Settlement]:
    """Write a batch in one transaction; returns the settlements that were new (the others had
    been written before and changed nothing). ``count_usage=False`` writes the ids and records
    only (a deleted user's: there is no period row to add to)."""
    now = clock.now()
    # Sorted: two drainers writing overlapping batches take the rows' locks in one order.
    ordered = sorted({s.id: s for s in settlements}.values(), key=lambda s: s.id)
    if not ordered:
        return []
    async with db.write_transaction() as conn:
        inserted = await conn.execute(
            record_settlement(db.dialect), [{"rid": s.id, "now": now} for s in ordered]
        )
        new_ids = set(inserted.scalars())
        fresh = [s for s in ordered if s.id in new_ids]
        sums: dict[tuple[uuid.UUID, datetime], list[Any]] = {}
        for s in fresh:
            total = sums.setdefault((s.user_id, s.period_start), [0, 0, s.period_end])
            total[0] += s.tokens
            total[1] += s.cost_nanos
        for (user_id, period_start), (tokens, cost, period_end) in sorted(sums.items()):
            if not count_usage:
                break
            add = (
                update(P)
                .where(P.c.user_id == user_id, P.c.period_start == period_start)
                .values(
                    used_tokens=P.c.used_tokens + tokens,
                    used_cost_nanos=P.c.used_cost_nanos + cost,
                    updated_at=now,
                )
            )
            if (await conn.execute(add)).rowcount == 0:
                await conn.execute(
                    create_period(db.dialect, user_id, period_start, period_end, now)
                )
                await conn.execute(add)
        records = [s.record for s in fresh if s.record is not None]
        if records:
            await write_records(conn, records)
    LEDGER_WRITTEN.inc(len(records))
    return fresh


async def seed_snapshot(
    db: SqlQuotaStore, user_id: uuid.UUID, period_start: datetime, ids: list[uuid.UUID]
) -> tuple[QuotaState, set[uuid.UUID]]:
    """The period's durable counters and which of ``ids`` they already count, read in ONE
    snapshot (so that a drain committing meanwhile is seen in both or in neither)."""
    async with db.write_transaction("REPEATABLE READ") as conn:
        row = (
            await conn.execute(
                select(P.c.id, *STATE_COLUMNS).where(
                    P.c.user_id == user_id, P.c.period_start == period_start
                )
            )
        ).first()
        counted: set[uuid.UUID] = set()
        for at in range(0, len(ids), _CHUNK):
            chunk = ids[at : at + _CHUNK]
            counted.update((await conn.execute(select(S.c.id).where(S.c.id.in_(chunk)))).scalars())
    return (state_of(row) if row is not None else QuotaState()), counted
