"""Rollups of the usage ledger: written with each ledger batch, read by the analytics.

``add`` runs in the ledger writer's transaction, just before the batch's rows are inserted: the
rollup and the ledger commit or roll back together, so a retried batch is counted once (the
failed attempt left nothing behind). ``split`` cuts a window into what the rollup can answer
(whole hours or days) and the edges that must be read from the ledger, so figures stay exact
for any ``from`` and ``to``. Migration 0008 backfills the rollups from an existing ledger.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import ColumnElement, Table, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from kiban.core import clock
from kiban.models import (
    UsageHistogramDaily,
    UsageHistogramHourly,
    UsageRecord,
    UsageRollupHourly,
    UsageRollupUserDaily,
    UsageStatus,
)
from kiban.models.rollup import NO_PLAN, NO_USER
from kiban.usage.bins import record_bins

COST_SCALE = 10**10  # the ledger stores Numeric(20, 10): costs are whole 1e-10 USD units
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
STATUSES = tuple(s.value for s in UsageStatus)

R = UsageRollupHourly
D = UsageRollupUserDaily
H = UsageHistogramHourly
HD = UsageHistogramDaily
_HOURLY_KEYS = ("hour", "model", "endpoint", "status", "plan")
_HOURLY_FIGURES = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_units",
    "unpriced",
)
_DAILY_KEYS = ("day", "user_id")
_DAILY_FIGURES = ("requests", "total_tokens", "cost_units")
_HISTOGRAM_KEYS = ("hour", "metric", "bin")
_DAILY_HISTOGRAM_KEYS = ("day", "metric", "bin")


def to_units(cost: Decimal | float | None) -> int:
    """A cost as whole 1e-10 USD, rounded as the ledger's column and SQL ``ROUND`` do."""
    if cost is None:
        return 0
    return int((Decimal(cost) * COST_SCALE).to_integral_value(ROUND_HALF_UP))


# The four rollup tables, with the key columns a record's sums are grouped by and the figures
# summed into them.
UPSERTS: tuple[tuple[Any, tuple[str, ...], tuple[str, ...]], ...] = (
    (R.__table__, _HOURLY_KEYS, _HOURLY_FIGURES),
    (D.__table__, _DAILY_KEYS, _DAILY_FIGURES),
    (H.__table__, _HISTOGRAM_KEYS, ("count",)),
    (HD.__table__, _DAILY_HISTOGRAM_KEYS, ("count",)),
)


def rollup_rows(records: Sequence[MutableMapping[str, Any]]) -> list[list[dict[str, Any]]]:
    """What a ledger batch adds to each table of ``UPSERTS`` (in its order): one row of sums
    per key, sorted by key so that concurrent writers lock rows in the same order.

    A record without ``created_at`` gets ``clock.now()`` here, in the dict, so that its ledger
    row and its rollup bucket agree.
    """
    hourly: dict[tuple[Any, ...], list[int]] = {}
    daily: dict[tuple[Any, ...], list[int]] = {}
    binned: dict[tuple[Any, ...], list[int]] = {}
    binned_daily: dict[tuple[Any, ...], list[int]] = {}
    for record in records:
        at = record.setdefault("created_at", clock.now()).astimezone(UTC)
        hour = at.replace(minute=0, second=0, microsecond=0)
        prompt = int(record.get("prompt_tokens") or 0)
        completion = int(record.get("completion_tokens") or 0)
        total = int(record.get("total_tokens") or 0)
        cost = record.get("estimated_cost")
        units = to_units(cost)
        key = (hour, record["model"], record["endpoint"], record["status"])
        figures = (1, prompt, completion, total, units, int(cost is None and total > 0))
        _accumulate(hourly, (*key, record.get("plan") or NO_PLAN), figures)
        user = record.get("user_id") or NO_USER
        _accumulate(daily, (hour.replace(hour=0), user), (1, total, units))
        for metric, index in record_bins(record):
            _accumulate(binned, (hour, metric, index), (1,))
            _accumulate(binned_daily, (hour.replace(hour=0), metric, index), (1,))
    return [
        [
            dict(zip((*keys, *figures), (*key, *values), strict=True))
            for key, values in _in_key_order(rows)
        ]
        for (_, keys, figures), rows in zip(
            UPSERTS, (hourly, daily, binned, binned_daily), strict=True
        )
    ]


def upsert_statement(
    dialect: str, table: Table, keys: Sequence[str], figures: Sequence[str]
) -> Any:
    """``INSERT … ON CONFLICT (keys) DO UPDATE`` adding the figures to the row's."""
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    statement = insert(table)
    return statement.on_conflict_do_update(
        index_elements=list(keys),
        set_={name: table.c[name] + statement.excluded[name] for name in figures},
    )


async def add(
    session: AsyncSession | AsyncConnection, records: Sequence[MutableMapping[str, Any]]
) -> None:
    """Add a ledger batch to the rollups (call it in the transaction that inserts the batch)."""
    bind = session if isinstance(session, AsyncConnection) else session.get_bind()
    for (table, keys, figures), params in zip(UPSERTS, rollup_rows(records), strict=True):
        if params:
            statement = upsert_statement(bind.dialect.name, table, keys, figures)
            await session.execute(statement, params)


def _in_key_order(rows: dict[tuple[Any, ...], list[int]]) -> Any:
    """Rows in one order for every writer (concurrent batches then take row locks in the same
    order); a single row, a single call's record, needs no sorting."""
    if len(rows) <= 1:
        return rows.items()
    return sorted(rows.items(), key=lambda kv: tuple(map(str, kv[0])))


def _accumulate(
    into: dict[tuple[Any, ...], list[int]], key: tuple[Any, ...], figures: Sequence[int]
) -> None:
    slot = into.setdefault(key, [0] * len(figures))
    for i, value in enumerate(figures):
        slot[i] += value


async def rebuild(session: AsyncSession, chunk: int = 5_000) -> int:
    """Recompute the rollups from the whole ledger, in the caller's transaction; the row count.

    For a ledger written some other way than the writer (a restore, an import). Writers wait
    meanwhile: SQLite's write lock is taken by the first DELETE, PostgreSQL's tables are locked.
    """
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text(
                "LOCK TABLE usage_rollups_hourly, usage_rollups_user_daily,"
                " usage_histograms_hourly, usage_histograms_daily IN EXCLUSIVE MODE"
            )
        )
    for table in (R, D, H, HD):
        await session.execute(delete(table))
    columns = [getattr(UsageRecord, name) for name in _LEDGER_COLUMNS]
    result = await session.stream(select(*columns).execution_options(yield_per=chunk))
    count = 0
    async for rows in result.partitions():
        await add(session, [dict(row._mapping) for row in rows])
        count += len(rows)
    return count


_LEDGER_COLUMNS = (
    "created_at",
    "model",
    "endpoint",
    "status",
    "plan",
    "user_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "estimated_cost",
    "response_time_ms",
    "time_to_first_token_ms",
)


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """A window ``[start, end)`` cut into whole steps (the rollup) and edges (the ledger)."""

    whole: tuple[datetime, datetime] | None
    edges: list[tuple[datetime, datetime]]


def _floor(at: datetime, step: timedelta) -> datetime:
    at = at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0) if step == DAY else at


def split(start: datetime, end: datetime, step: timedelta) -> Split:
    """The whole hours (or days) inside the window, and the partial ones at its two ends."""
    first = _floor(start, step)
    if first < start:
        first += step
    last = _floor(end, step)
    if first >= last:
        return Split(None, [(start, end)])
    edges = [(a, b) for a, b in ((start, first), (last, end)) if a < b]
    return Split((first, last), edges)


def hourly_aggregates() -> list[ColumnElement[Any]]:
    """The analytics' aggregate columns (same labels as over the ledger), over the hourly rollup."""
    requests = func.sum(R.requests)
    return [
        requests.label("requests"),
        *(func.sum(R.requests).filter(R.status == s).label(f"s_{s}") for s in STATUSES),
        func.sum(R.prompt_tokens).label("prompt_tokens"),
        func.sum(R.completion_tokens).label("completion_tokens"),
        func.sum(R.total_tokens).label("total_tokens"),
        func.sum(R.cost_units).label("cost_units"),
        func.sum(R.unpriced).label("unpriced"),
    ]
