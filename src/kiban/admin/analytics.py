"""Analytics over the usage ledger: a window's summary, time series and mix.

Top users are in ``kiban.admin.top_users``.

Definitions (also in docs/operations.md and checked by the tests against plain Python):

- ``requests``: ledger records created in ``[start, end)``, whatever their status.
- ``error_rate``: records with status ``error`` over all records; ``no_context_rate`` likewise.
- latency percentiles: over records that were answered or attempted (every status except
  ``rejected``, which never reached a provider); TTFT percentiles: over those with a
  time to first token (streamed).
- ``cost_usd``: the exact sum of the recorded costs; records without a price are left out and
  counted in ``unpriced_requests`` when they used tokens.

Sums of cost are taken in integer units of 1e-10 USD (the ledger's scale), exact on both databases.
Counts, tokens and cost come from the rollups for the whole hours (days, for top users) of a
window and from the ledger for its partial edges (``kiban.usage.rollups``). Percentiles are exact
values of the ledger, located with the hourly histograms (``kiban.usage.histograms``); one user's
summary and per-group time series, which the histograms do not split, sample the ledger instead
(``kiban.usage.percentiles``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    String,
    and_,
    cast,
    func,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.admin.exceptions import InvalidWindow, TooManyBuckets
from kiban.admin.schemas import (
    GroupBy,
    Interval,
    MixEntry,
    Point,
    Series,
    Summary,
    Timeseries,
)
from kiban.models import UsageRecord, UsageRollupHourly, UsageRollupUserDaily, UsageStatus
from kiban.models.rollup import NO_PLAN
from kiban.usage import (
    HOUR,
    LATENCY,
    TTFT,
    Buckets,
    Column,
    Metric,
    Selection,
    Wanted,
    binned_percentiles,
    hourly_aggregates,
    nearest_rank,
    split_window,
)

COST_SCALE = 10**10  # the ledger stores Numeric(20, 10)
MAX_BUCKETS = 2_000
LATENCY_PERCENTS = (50, 95, 99)
TTFT_PERCENTS = (50, 95)
STATUSES = tuple(s.value for s in UsageStatus)
_METRICS = (
    Metric(LATENCY, UsageRecord.response_time_ms, LATENCY_PERCENTS),
    Metric(TTFT, UsageRecord.time_to_first_token_ms, TTFT_PERCENTS),
)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)
OUT_OF_RANGE = "'from' and 'to' must be times between the years 1 and 9999."

U = UsageRecord
R = UsageRollupHourly
D = UsageRollupUserDaily


@dataclass(frozen=True)
class Window:
    """A half-open time range ``[start, end)`` in UTC."""

    start: datetime
    end: datetime

    @classmethod
    def parse(cls, start: datetime | None, end: datetime | None, now: datetime) -> Window:
        """The window a request asked for (naive times are UTC); default: the last 7 days."""
        try:
            end = _utc(end) if end else now
            start = _utc(start) if start else end - timedelta(days=7)
        except OverflowError as e:  # e.g. to=0001-01-01: no UTC time, or no week before it
            raise InvalidWindow(OUT_OF_RANGE) from e
        if end > LATEST:  # bucket edges round up to the next hour or day
            raise InvalidWindow(OUT_OF_RANGE)
        if start >= end:
            raise InvalidWindow("'from' must be before 'to'.")
        return cls(start, end)

    def filters(self) -> list[ColumnElement[bool]]:
        return [U.created_at >= self.start, U.created_at < self.end]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def without_jit(session: AsyncSession) -> None:
    """Turn PostgreSQL's JIT off for this transaction (no-op elsewhere).

    Measured in bench/analytics_summary.py: compiling these wide aggregates costs more than it
    saves (the summary over 300k rows took 1.26 s with JIT, 0.59 s without). ``SET LOCAL`` ends
    with the transaction, so nothing leaks to other users of the pooled connection.
    """
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SET LOCAL jit = off"))


def cost_units() -> ColumnElement[Any]:
    """The record's cost as an integer count of 1e-10 USD (SUM over it is exact everywhere)."""
    return cast(func.round(U.estimated_cost * literal(COST_SCALE, BigInteger)), BigInteger)


def units_to_usd(units: int | Decimal | None) -> Decimal:
    return (Decimal(int(units or 0)) / COST_SCALE).quantize(Decimal("1e-10"))


def _aggregates() -> list[ColumnElement[Any]]:
    # count(*) FILTER (WHERE ...) (SQLite >= 3.30, PostgreSQL): cheaper than SUM(CASE ...).
    return [
        func.count().label("requests"),
        *(func.count().filter(U.status == s).label(f"s_{s}") for s in STATUSES),
        func.sum(U.prompt_tokens).label("prompt_tokens"),
        func.sum(U.completion_tokens).label("completion_tokens"),
        func.sum(U.total_tokens).label("total_tokens"),
        func.sum(cost_units()).label("cost_units"),
        func.count().filter(U.estimated_cost.is_(None), U.total_tokens > 0).label("unpriced"),
    ]


def _figures(
    row: Mapping[Any, Any], latency: dict[int, float | None], ttft: dict[int, float | None]
) -> dict[str, Any]:
    requests = int(row["requests"] or 0)
    by_status = {s: int(row[f"s_{s}"] or 0) for s in STATUSES}
    prompt, completion = int(row["prompt_tokens"] or 0), int(row["completion_tokens"] or 0)
    return {
        "requests": requests,
        "by_status": by_status,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": units_to_usd(row["cost_units"]),
        "unpriced_requests": int(row["unpriced"] or 0),
        "error_rate": by_status[UsageStatus.ERROR] / requests if requests else None,
        "no_context_rate": by_status[UsageStatus.NO_CONTEXT] / requests if requests else None,
        "latency_p50_ms": latency.get(50),
        "latency_p95_ms": latency.get(95),
        "latency_p99_ms": latency.get(99),
        "ttft_p50_ms": ttft.get(50),
        "ttft_p95_ms": ttft.get(95),
    }


_AGGREGATE_NAMES = (
    "requests",
    *(f"s_{s}" for s in STATUSES),
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_units",
    "unpriced",
)


def _empty_figures() -> dict[str, Any]:
    return _figures(dict.fromkeys(_AGGREGATE_NAMES, 0), {}, {})


def between(column: Any, edges: Sequence[tuple[datetime, datetime]]) -> ColumnElement[bool]:
    return or_(*(and_(column >= a, column < b) for a, b in edges))


async def _hourly(
    session: AsyncSession, window: Window, keys: Sequence[tuple[Any, Any]]
) -> dict[tuple[Any, ...], dict[str, int]]:
    """The aggregates per key: whole hours from the rollup, the window's edges from the ledger.

    ``keys`` are pairs of expressions, over the rollup and over the ledger, that must give equal
    values for the same records (a bucket's text, a group).
    """
    split = split_window(window.start, window.end, HOUR)
    queries = []
    if split.whole:
        whole = (R.hour >= split.whole[0], R.hour < split.whole[1])
        labelled = [k.label(f"k{i}") for i, (k, _) in enumerate(keys)]
        queries.append(select(*labelled, *hourly_aggregates()).where(*whole).group_by(*labelled))
    if split.edges:
        labelled = [k.label(f"k{i}") for i, (_, k) in enumerate(keys)]
        edges = between(U.created_at, split.edges)
        queries.append(select(*labelled, *_aggregates()).where(edges).group_by(*labelled))
    merged: dict[tuple[Any, ...], dict[str, int]] = {}
    for query in queries:
        for row in await session.execute(query):
            values = row._mapping
            key = tuple(values[f"k{i}"] for i in range(len(keys)))
            slot = merged.setdefault(key, dict.fromkeys(_AGGREGATE_NAMES, 0))
            for name in _AGGREGATE_NAMES:
                slot[name] += int(values[name] or 0)
    return merged


async def summary(
    session: AsyncSession, window: Window, *, user_id: uuid.UUID | None = None, **tuning: int
) -> Summary:
    """Requests, tokens, cost, error and no-context rates, latency and TTFT percentiles."""
    filters = window.filters()
    if user_id is not None:
        filters.append(U.user_id == user_id)
    await without_jit(session)

    def in_scope(row: Any) -> bool:
        return bool(
            window.start <= row.created_at < window.end
            and (user_id is None or row.user_id == user_id)
            and row.status != UsageStatus.REJECTED
        )

    selection = Selection(
        filters,
        [U.status != UsageStatus.REJECTED],
        [
            Wanted(U.response_time_ms, LATENCY_PERCENTS),
            Wanted(U.time_to_first_token_ms, TTFT_PERCENTS),
        ],
        in_scope=in_scope,
        **tuning,
    )
    if user_id is not None:
        # The rollup has no per-user hours; the ledger's (user_id, created_at) index serves this.
        await selection.prepare(session)
        aggregates = _aggregates()
        query = select(*aggregates, *selection.count_columns()).where(*filters)
        row = (await session.execute(query)).one()
        totals: Mapping[Any, Any] = row._mapping
        counted: Sequence[Any] = row[len(aggregates) :]
    else:
        empty = dict.fromkeys(_AGGREGATE_NAMES, 0)
        totals = (await _hourly(session, window, [])).get((), empty)
        binned = await binned_percentiles(session, window.start, window.end, _METRICS)
        if binned is not None:
            latency, ttft = binned.get(None, [{}, {}])
            return Summary(start=window.start, end=window.end, **_figures(totals, latency, ttft))
        # The histograms disagree with the ledger: sample. The rollups know the window's size,
        # so the selection need not count it again.
        await selection.prepare(session, rows=totals["requests"])
        counted = []
        if selection.needs_counts:
            query = select(*selection.count_columns()).where(*filters)
            counted = (await session.execute(query)).one()
    latency, ttft = await selection.finish(session, counted)
    return Summary(start=window.start, end=window.end, **_figures(totals, latency, ttft))


# --- time series ---------------------------------------------------------------------------


def bucket_starts(window: Window, interval: Interval) -> list[datetime]:
    """Every bucket that overlaps the window, oldest first."""
    step = timedelta(hours=1) if interval is Interval.HOUR else timedelta(days=1)
    first = window.start.replace(minute=0, second=0, microsecond=0)
    if interval is Interval.DAY:
        first = first.replace(hour=0)
    count = -(-(window.end - first) // step)
    if count > MAX_BUCKETS:
        raise TooManyBuckets(count, MAX_BUCKETS)
    return [first + i * step for i in range(count)]


def _bucket_expr(
    session: AsyncSession, interval: Interval, column: Any = U.created_at
) -> ColumnElement[str]:
    # The only dialect-specific SQL here: the bucket as text, 'YYYY-MM-DD HH' or 'YYYY-MM-DD'.
    if session.get_bind().dialect.name == "sqlite":
        # SQLite stores UTC timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' text.
        return func.substr(cast(column, String), 1, 13 if interval is Interval.HOUR else 10)
    fmt = "YYYY-MM-DD HH24" if interval is Interval.HOUR else "YYYY-MM-DD"
    return func.to_char(func.timezone("UTC", column), fmt)


def histogram_buckets(session: AsyncSession, interval: Interval) -> Buckets:
    """The time series' buckets, as the histograms read them (keyed by the bucket's text)."""
    step = timedelta(hours=1) if interval is Interval.HOUR else timedelta(days=1)
    return Buckets(
        sql=lambda column: _bucket_expr(session, interval, column),
        span=lambda text: (_parse_bucket(text), _parse_bucket(text) + step),
        daily=interval is Interval.DAY,
    )


def _parse_bucket(text: str) -> datetime:
    fmt = "%Y-%m-%d %H" if len(text) > 10 else "%Y-%m-%d"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


_GROUP_COLUMNS = {
    GroupBy.MODEL: U.model,
    GroupBy.ENDPOINT: U.endpoint,
    GroupBy.STATUS: U.status,
    GroupBy.PLAN: U.plan,
}
_ROLLUP_GROUPS: dict[GroupBy, Any] = {
    GroupBy.MODEL: R.model,
    GroupBy.ENDPOINT: R.endpoint,
    GroupBy.STATUS: R.status,
    GroupBy.PLAN: func.nullif(R.plan, NO_PLAN),  # the rollup keeps no plan as ''
}


def _group_keys(group_by: GroupBy | None) -> tuple[Any, Any]:
    if group_by is None:
        return literal(None, String), literal(None, String)
    return _ROLLUP_GROUPS[group_by], _GROUP_COLUMNS[group_by]


async def timeseries(
    session: AsyncSession, window: Window, interval: Interval, group_by: GroupBy | None
) -> Timeseries:
    """The summary's figures per time bucket and group (empty buckets included, as zeros)."""
    buckets = bucket_starts(window, interval)
    bucket = _bucket_expr(session, interval).label("b")
    group: ColumnElement[Any] = (
        _GROUP_COLUMNS[group_by] if group_by else literal(None, String)
    ).label("g")
    filters = window.filters()
    await without_jit(session)
    keys = [
        (_bucket_expr(session, interval, R.hour), _bucket_expr(session, interval)),
        _group_keys(group_by),
    ]
    rows = await _hourly(session, window, keys)
    percentiles = None
    if group_by is None:  # the histograms are per hour only, not per group
        cut = histogram_buckets(session, interval)
        percentiles = await binned_percentiles(session, window.start, window.end, _METRICS, cut)
    latency: dict[tuple[str, str | None], dict[int, float | None]]
    ttft: dict[tuple[str, str | None], dict[int, float | None]]
    if percentiles is not None:
        latency = {(b, None): v[0] for b, v in percentiles.items()}
        ttft = {(b, None): v[1] for b, v in percentiles.items()}
    else:
        attempted = [*filters, U.status != UsageStatus.REJECTED]
        latency = await _grouped_percentiles(
            session, bucket, group, U.response_time_ms, attempted, LATENCY_PERCENTS
        )
        ttft = await _grouped_percentiles(
            session,
            bucket,
            group,
            U.time_to_first_token_ms,
            [*attempted, U.time_to_first_token_ms.is_not(None)],
            TTFT_PERCENTS,
        )
    by_group: dict[str | None, dict[datetime, dict[str, Any]]] = {}
    totals: dict[str | None, int] = {}
    for (b, g), values in rows.items():
        key = (b, g)
        by_group.setdefault(g, {})[_parse_bucket(b)] = _figures(
            values, latency.get(key, {}), ttft.get(key, {})
        )
        totals[g] = totals.get(g, 0) + values["requests"]
    if not by_group and group_by is None:
        by_group[None] = {}
    empty = _empty_figures()
    series = [
        Series(
            group=g,
            points=[Point(bucket=b, **by_group[g].get(b, empty)) for b in buckets],
        )
        for g in sorted(by_group, key=lambda g: (-totals.get(g, 0), str(g)))
    ]
    return Timeseries(
        start=window.start, end=window.end, interval=interval, group_by=group_by, series=series
    )


async def _grouped_percentiles(
    session: AsyncSession,
    bucket: ColumnElement[Any],
    group: ColumnElement[Any],
    column: Column,
    filters: Sequence[ColumnElement[bool]],
    percents: Sequence[int],
) -> dict[tuple[str, str | None], dict[int, float | None]]:
    """Nearest-rank percentiles per (bucket, group), with window functions (one sort)."""
    partition = (bucket, group)
    inner = (
        select(
            bucket,
            group,
            column.label("v"),
            func.row_number().over(partition_by=partition, order_by=column).label("rn"),
            func.count().over(partition_by=partition).label("n"),
        )
        .where(*filters)
        .subquery()
    )
    wanted = or_(*(inner.c.rn == (p * inner.c.n + 99) // 100 for p in percents))
    rows = await session.execute(
        select(inner.c.b, inner.c.g, inner.c.rn, inner.c.n, inner.c.v).where(wanted)
    )
    result: dict[tuple[str, str | None], dict[int, float | None]] = {}
    for row in rows:
        slot = result.setdefault((row.b, row.g), {})
        for p in percents:
            if nearest_rank(p, int(row.n)) == int(row.rn):
                slot[p] = float(row.v)
    return result


async def mix(session: AsyncSession, window: Window, group_by: GroupBy) -> list[MixEntry]:
    """Requests, tokens and cost per model, endpoint, status or plan, largest first."""
    await without_jit(session)
    rows = await _hourly(session, window, [_group_keys(group_by)])
    ordered = sorted(rows.items(), key=lambda kv: (-kv[1]["requests"], kv[0][0] is None, kv[0]))
    return [
        MixEntry(
            group=g,
            requests=v["requests"],
            total_tokens=v["total_tokens"],
            cost_usd=units_to_usd(v["cost_units"]),
        )
        for (g,), v in ordered
    ]
