"""Exact latency and TTFT percentiles from per-hour histograms (decision 0062).

A nearest-rank percentile of a window needs, in principle, every value in it; sampling
(``kiban.usage.percentiles``) still reads the window twice. The histogram rollup keeps instead,
per UTC hour, how many values fell in each of a fixed set of bins, written with each ledger batch
like the other rollups (and per UTC day). For a window:

1. the bins' counts are summed over its whole days (a daily table) and the other whole hours (an
   hourly one); its partial hours at both ends (the edges) are read from the ledger and binned
   here;
2. each wanted rank falls in one bin, found by walking the cumulative counts, which also says
   how many values lie below that bin;
3. only that bin's values are fetched from the ledger (an index on the value serves them), and
   the answer is picked from them: exact, with no sampling and no pass over the window.

A fetched bin must hold exactly as many values as its count says. If it does not twice in a row
(ledger rows written around the writer, before ``kiban admin rebuild-rollups``), ``percentiles``
returns ``None`` and the caller computes the slow way. Like every rollup, the histograms trust
the writer: a row written around it in a bin that is not fetched goes unnoticed (and so does
its effect on the rollups' counts) until ``rebuild-rollups``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import structlog
from sqlalchemy import ColumnElement, and_, false, func, literal, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.models import UsageHistogramDaily, UsageHistogramHourly, UsageRecord, UsageStatus
from kiban.usage import rollups
from kiban.usage.bins import LATENCY, TTFT, bin_of, bin_range
from kiban.usage.percentiles import Column, nearest_rank

log = structlog.get_logger(__name__)

H = UsageHistogramHourly
HD = UsageHistogramDaily
U = UsageRecord
# What reading one index entry by time costs against one by value (the time scan tests every
# row against the bins): measured on the 1M-record bench, ~0.3-0.5 against ~0.2 microseconds.
TIME_ENTRY_COST = 2
Fetch = Literal["auto", "value", "time"]
# More values than this in the wanted bins (heavy ties: most values in one 5% bin): the caller's
# other ways (sampling with an ORDER BY/OFFSET fallback) are cheaper than fetching them all.
FETCH_LIMIT = 200_000
# SQLite refuses a compound SELECT of more than 500 parts, and an expression deeper than 1000:
# the fetch goes in statements of at most this many parts, and a bin wanted by more time ranges
# than this is fetched over the whole window.
PARTS_PER_STATEMENT = 200
MAX_SPANS = 64


@dataclass(frozen=True)
class Metric:
    """Percentiles wanted of one histogrammed column."""

    name: str  # LATENCY or TTFT
    column: Column
    percents: Sequence[int]


_INDEXES = {LATENCY: "ix_usage_records_latency", TTFT: "ix_usage_records_ttft"}


@dataclass(frozen=True)
class Buckets:
    """A window cut in time buckets: ``sql`` gives a time column's bucket key in SQL, for the
    histograms' hour or day and for the ledger's ``created_at`` alike (the analytics use
    'YYYY-MM-DD HH' or 'YYYY-MM-DD' text)."""

    sql: Callable[[Any], ColumnElement[Any]]
    span: Callable[[Any], tuple[datetime, datetime]]  # a key's time range [start, end)
    daily: bool = False  # whole UTC days: the daily histogram may answer for them


Key = Any  # a bucket's key, or None for the whole window
Counts = dict[tuple[Key, int], dict[int, int]]  # (bucket, metric index) -> bin -> count


async def percentiles(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    metrics: Sequence[Metric],
    buckets: Buckets | None = None,
    *,
    fetch: Fetch = "auto",
) -> dict[Key, list[dict[int, float | None]]] | None:
    """Nearest-rank percentiles over ``[start, end)`` (rejected records left out), per bucket.

    ``None`` when the caller must compute them another way: a fetched bin disagrees with the
    ledger, or the wanted bins hold too many values to fetch (heavy ties).
    """
    for attempt in (1, 2):
        try:
            return await _attempt(session, start, end, metrics, buckets, fetch)
        except _Disagreement as disagreement:
            # A record the writer committed between the counts and the fetch (a long stream's
            # record lands in an hour already counted) explains a first disagreement; a second
            # one in a row means the rollups are stale.
            if attempt == 2:
                log.warning(
                    "histogram_disagrees_with_ledger",
                    **disagreement.fields,
                    hint="run `kiban admin rebuild-rollups`",
                )
        except _TooManyValues as too_many:
            log.info("histogram_bins_too_full", values=too_many.values, limit=FETCH_LIMIT)
            return None
    return None


class _Disagreement(Exception):
    def __init__(self, **fields: Any) -> None:
        self.fields = fields


class _TooManyValues(Exception):
    def __init__(self, values: int) -> None:
        self.values = values


async def _attempt(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    metrics: Sequence[Metric],
    buckets: Buckets | None,
    fetch: Fetch,
) -> dict[Key, list[dict[int, float | None]]]:
    split = rollups.split(start, end, rollups.HOUR)
    names = [m.name for m in metrics]
    counts: Counts = {}
    if split.whole:
        for row in await session.execute(_counts(split.whole, names, buckets)):
            slot = counts.setdefault((row.k, names.index(row.metric)), {})
            slot[row.bin] = slot.get(row.bin, 0) + int(row.n)
    whole_counts = {k: dict(v) for k, v in counts.items()}
    # The edges' values, read whole (at most two partial hours) and binned here.
    edge_values: dict[tuple[Key, int, int], list[float]] = {}
    if split.edges:
        columns = [m.column for m in metrics]
        query = select(_key(buckets), *columns).where(
            or_(*(and_(U.created_at >= a, U.created_at < b) for a, b in split.edges)),
            U.status != UsageStatus.REJECTED,
        )
        for row in await session.execute(query):
            key = row[0]
            values: Sequence[float | None] = row[1:]
            for i, value in enumerate(values):
                if value is not None:
                    b = bin_of(value)
                    slot = counts.setdefault((key, i), {})
                    slot[b] = slot.get(b, 0) + 1
                    edge_values.setdefault((key, i, b), []).append(float(value))
    # Where each rank falls: (bucket, metric, percent) -> (bin, rank within the bin).
    targets: dict[tuple[Key, int, int], tuple[int, int]] = {}
    for (key, i), bins in counts.items():
        n = sum(bins.values())
        ranks = sorted((nearest_rank(p, n), p) for p in metrics[i].percents) if n else []
        below, r = 0, 0
        for b in sorted(bins):
            while r < len(ranks) and ranks[r][0] <= below + bins[b]:
                targets[(key, i, ranks[r][1])] = (b, ranks[r][0] - below)
                r += 1
            below += bins[b]
    wanted_values = sum(
        whole_counts.get((key, i), {}).get(b, 0)
        for key, i, b in {(key, i, b) for (key, i, _), (b, _) in targets.items()}
    )
    if wanted_values > FETCH_LIMIT:
        raise _TooManyValues(wanted_values)
    fetched = await _fetch(session, split.whole, metrics, targets, whole_counts, buckets, fetch)
    result: dict[Key, list[dict[int, float | None]]] = {}
    for key, _ in counts:
        result.setdefault(key, [dict.fromkeys(m.percents) for m in metrics])
    for (key, i, p), (b, offset) in targets.items():
        values = sorted(fetched.get((key, i, b), []) + edge_values.get((key, i, b), []))
        if len(values) != counts[(key, i)][b]:
            raise _Disagreement(
                metric=metrics[i].name, bin=b, counted=counts[(key, i)][b], found=len(values)
            )
        result[key][i][p] = values[offset - 1]
    return result


def _counts(whole: tuple[datetime, datetime], names: Sequence[str], buckets: Buckets | None) -> Any:
    """The bins' counts over whole hours: whole days from the daily table (when the buckets
    allow), the hours around them from the hourly one."""
    hours = [whole]
    parts = []
    if buckets is None or buckets.daily:
        days = rollups.split(whole[0], whole[1], rollups.DAY)
        if days.whole:
            hours = days.edges  # hour-aligned, since the whole hours are
            key = buckets.sql(HD.day) if buckets else literal(None)
            parts.append(
                select(key.label("k"), HD.metric, HD.bin, func.sum(HD.count).label("n"))
                .where(HD.day >= days.whole[0], HD.day < days.whole[1], HD.metric.in_(names))
                .group_by(key, HD.metric, HD.bin)
            )
    if hours:
        key = buckets.sql(H.hour) if buckets else literal(None)
        parts.append(
            select(key.label("k"), H.metric, H.bin, func.sum(H.count).label("n"))
            .where(or_(*(and_(H.hour >= a, H.hour < b) for a, b in hours)), H.metric.in_(names))
            .group_by(key, H.metric, H.bin)
        )
    return parts[0] if len(parts) == 1 else union_all(*parts)


async def _fetch(
    session: AsyncSession,
    whole: tuple[datetime, datetime] | None,
    metrics: Sequence[Metric],
    targets: Mapping[tuple[Key, int, int], tuple[int, int]],
    whole_counts: Counts,
    buckets: Buckets | None,
    fetch: Fetch,
) -> dict[tuple[Key, int, int], list[float]]:
    """The ledger values of the target bins in the window's whole hours, by (bucket, metric, bin).

    By value: per metric and bin, a range of the value index. By time: one pass over the window's
    own time range. ``auto`` takes the one that reads fewer index entries (``_by_time``).
    """
    wanted = {(key, i, b) for (key, i, _), (b, _) in targets.items()}
    if whole is None or not any(whole_counts.get((k, i), {}).get(b) for k, i, b in wanted):
        return {}
    in_whole = (U.created_at >= whole[0], U.created_at < whole[1])
    attempted = U.status != UsageStatus.REJECTED
    by_metric: dict[int, dict[int, set[Key]]] = {}
    for key, i, b in wanted:
        by_metric.setdefault(i, {}).setdefault(b, set()).add(key)
    by_time = fetch == "time" or (fetch == "auto" and await _by_time(session, wanted, whole_counts))
    sqlite = session.get_bind().dialect.name == "sqlite"
    parts = []
    for i, bins in sorted(by_metric.items()):
        column = metrics[i].column
        if by_time:
            ranges = [_in_bin(column, b) for b in sorted(bins)]
            parts.append(
                select(literal(i).label("m"), _key(buckets), column.label("v")).where(
                    *in_whole, attempted, or_(*ranges)
                )
            )
            continue
        for b, keys in sorted(bins.items()):
            # Only the buckets that want this bin: a bin's values in the other buckets would be
            # read from the index anyway, but need not travel back here.
            when = (
                _in_spans(whole, [buckets.span(k) for k in keys])
                if buckets and len(keys) <= MAX_SPANS
                else in_whole
            )
            part = select(literal(i).label("m"), _key(buckets), column.label("v"))
            part = part.where(_in_bin(column, b), *when, attempted)
            if sqlite:
                # SQLite's planner, without statistics, may take the time index and read the
                # whole window: name the value index (PostgreSQL's planner has statistics).
                part = part.with_hint(U, f"INDEXED BY {_INDEXES[metrics[i].name]}", "sqlite")
            parts.append(part)
    found: dict[tuple[Key, int, int], list[float]] = {}
    for first in range(0, len(parts), PARTS_PER_STATEMENT):
        chunk = parts[first : first + PARTS_PER_STATEMENT]
        statement = chunk[0] if len(chunk) == 1 else union_all(*chunk)
        for m, key, value in await session.execute(statement):
            slot = (key, m, bin_of(value))
            if slot in wanted:
                found.setdefault(slot, []).append(float(value))
    return found


async def _by_time(
    session: AsyncSession, wanted: set[tuple[Key, int, int]], whole_counts: Counts
) -> bool:
    """Whether reading the window by time costs less than reading the wanted bins by value.

    A bin's index range covers the ledger's whole history, so by value reads about the bins'
    share of the window times the ledger's size; by time reads the window.
    """
    window = sum(sum(c.values()) for (_, i), c in whole_counts.items() if i == 0)
    if window == 0:
        return True
    in_bins = sum(whole_counts.get((key, i), {}).get(b, 0) for key, i, b in wanted)
    # The ledger's size from its ids: two primary-key seeks (one query with both min() and max()
    # would make SQLite scan the table); a few gaps in the ids do not matter here.
    first = select(func.min(U.id)).scalar_subquery()
    last = select(func.max(U.id)).scalar_subquery()
    low, high = (await session.execute(select(first, last))).one()
    ledger = int(high) - int(low) + 1 if low is not None and high is not None else window
    return in_bins * ledger > TIME_ENTRY_COST * window * window


def _key(buckets: Buckets | None) -> ColumnElement[Any]:
    """A ledger row's bucket key, computed by the database (no datetime per row here)."""
    return (buckets.sql(U.created_at) if buckets else literal(None)).label("k")


def _in_spans(
    whole: tuple[datetime, datetime], spans: Sequence[tuple[datetime, datetime]]
) -> tuple[ColumnElement[bool], ...]:
    """``created_at`` within the union of ``spans`` (adjacent ones merged), inside ``whole``."""
    merged: list[list[datetime]] = []
    for start, end in sorted(spans):
        start, end = max(start, whole[0]), min(end, whole[1])
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        elif start < end:
            merged.append([start, end])
    ranges = [and_(U.created_at >= a, U.created_at < b) for a, b in merged]
    return (or_(*ranges),) if ranges else (false(),)


def _in_bin(column: Column, index: int) -> ColumnElement[bool]:
    lo, hi = bin_range(index)
    parts: list[ColumnElement[bool]] = [column.is_not(None)]
    if lo is not None:
        parts.append(column >= lo)
    if hi is not None:
        parts.append(column < hi)
    return and_(*parts)
