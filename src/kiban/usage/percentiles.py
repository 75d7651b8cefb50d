"""Exact nearest-rank percentiles on SQLite and PostgreSQL alike, without sorting a whole window.

Definition (the one the API documents and the tests check against plain Python): for ``n``
values sorted ascending, the ``p``-th percentile (``p`` an integer 1..100) is the value at the
1-based rank ``ceil(p * n / 100)``, computed in integers. It is always one of the values (no
interpolation): PostgreSQL's ``percentile_disc(p / 100.0)``, but with the rank computed exactly
(``percentile_disc`` takes the ceiling of a float product).

SQLite has no percentile function, and sorting a million values there takes seconds, so large
windows use selection by sampling, which stays exact (``Selection``):

1. ``prepare``: a cheap look at the window (row count, smallest and largest row id), then a
   sample of about 8k rows fetched by primary key, gives for each wanted percentile a bracket of
   values ``[lo, hi]`` that almost surely holds it;
2. ``count_columns``: ``count(*) FILTER (WHERE value < lo)`` columns that the caller adds to its
   own aggregate pass count, for each bracket, the values below it;
3. ``finish``: one pass fetches only the values inside the brackets, which proves (or
   disproves) that each rank falls inside its bracket (``below < rank <= below + inside``); the
   answer is picked in Python. A bracket that misses its rank, or that the sample says is too big
   to fetch (heavy ties), falls back to the plain ``ORDER BY value LIMIT 1 OFFSET rank - 1``.

So a summary reads its window twice (its aggregates with the counts, then the brackets), whatever
the number of percentiles. Small windows just fetch their values. The same SQL runs on both
databases, so they agree by construction.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from kiban.models import UsageRecord

EXACT_FETCH_LIMIT = 20_000  # windows up to this size: fetch the values and sort them here
SAMPLE_SIZE = 8_192
BRACKET_LIMIT = 60_000  # more values than this in a bracket: use the ORDER BY fallback

# A numeric column of the ledger (``UsageRecord.response_time_ms`` ...).
Column = ColumnElement[Any] | InstrumentedAttribute[Any]
Db = AsyncSession | AsyncConnection
U = UsageRecord


def nearest_rank(p: int, n: int) -> int:
    """The 1-based rank of the p-th percentile among n values: ceil(p * n / 100), at least 1."""
    return max(1, (p * n + 99) // 100)


def pick(sorted_values: Sequence[float], percents: Sequence[int]) -> dict[int, float | None]:
    """Nearest-rank percentiles of values already sorted ascending."""
    n = len(sorted_values)
    if n == 0:
        return dict.fromkeys(percents)
    return {p: sorted_values[nearest_rank(p, n) - 1] for p in percents}


@dataclass(frozen=True)
class Wanted:
    """Percentiles wanted of one column (its NULLs are left out)."""

    column: Column
    percents: Sequence[int]


@dataclass(frozen=True)
class _Bracket:
    wanted: int  # index into the Wanted list
    percent: int
    lo: float | None  # None: below every value
    hi: float | None  # None: above every value
    estimate: float = 0.0  # how many rows the bracket holds, estimated from the sample


@dataclass
class Selection:
    """Nearest-rank percentiles of several columns, computed around the caller's aggregates.

    ``filters`` select the caller's rows (the window); ``where`` narrows them further for the
    percentiles only (e.g. leave out rejected requests), inside ``count(*) FILTER``.
    ``in_scope``, when given, is the same test in Python over a row's ``created_at``, ``user_id``
    and ``status``: it lets the sample be fetched by primary key alone (SQLite's planner would
    otherwise scan the window's index range to apply the filters).
    """

    filters: Sequence[ColumnElement[bool]]
    where: Sequence[ColumnElement[bool]]
    wanted: Sequence[Wanted]
    in_scope: Callable[[Any], bool] | None = None
    exact_fetch_limit: int = EXACT_FETCH_LIMIT
    sample_size: int = SAMPLE_SIZE
    bracket_limit: int = BRACKET_LIMIT
    _exact: list[dict[int, float | None]] | None = field(default=None, init=False)
    _brackets: list[_Bracket] = field(default_factory=list, init=False)

    async def prepare(self, db: Db, rows: int | None = None) -> None:
        """Look at the window; fetch a small one whole, sample a large one into brackets.

        ``rows``, when the caller already knows the window's row count (from the rollups),
        saves counting it: the ids to sample around are then found by two index seeks.
        """
        low_id: int | None
        high_id: int | None
        if rows is None:
            # Over ``filters`` alone: on SQLite the narrow created_at index answers it.
            query = select(func.count(), func.min(U.id), func.max(U.id)).where(*self.filters)
            rows, low_id, high_id = (await db.execute(query)).one()
        else:
            # The first and last ids by time: ids grow with time only roughly (the writer
            # inserts in completion order), which is enough to aim the sample.
            by_time = select(U.id).where(*self.filters).limit(1)
            low_id = (await db.execute(by_time.order_by(U.created_at))).scalar()
            high_id = (await db.execute(by_time.order_by(U.created_at.desc()))).scalar()
            if low_id is not None and high_id is not None and low_id > high_id:
                low_id, high_id = high_id, low_id
        if rows <= self.exact_fetch_limit or low_id is None or high_id is None:
            self._exact = await self._fetch_all(db)
            return
        sample = await self._sample(db, int(low_id), int(high_id), int(rows))
        scale = rows / max(1, len(sample))
        for i, w in enumerate(self.wanted):
            values = sorted(r[i] for r in sample if r[i] is not None)
            self._brackets += [_bracket(i, p, values, scale) for p in w.percents]

    @property
    def needs_counts(self) -> bool:
        """Whether ``finish`` needs the values of ``count_columns`` (a sampled, large window)."""
        return self._exact is None

    def count_columns(self) -> list[ColumnElement[Any]]:
        """Columns for the caller's aggregate query (over ``filters``), in order, for finish."""
        columns: list[ColumnElement[Any]] = [
            func.count().filter(*self.where, w.column.is_not(None)) for w in self.wanted
        ]
        for b in self._brackets:
            # Only the values below each bracket are counted here (the value test first: it
            # settles most rows); the bracket's own size is counted when it is fetched.
            column = self.wanted[b.wanted].column
            below = column < b.lo if b.lo is not None else false()
            columns.append(func.count().filter(below, *self.where))
        return columns

    async def finish(self, db: Db, counted: Sequence[Any]) -> list[dict[int, float | None]]:
        """The percentiles, given the values of ``count_columns`` from the aggregate pass."""
        if self._exact is not None:
            return self._exact
        results: list[dict[int, float | None]] = [dict.fromkeys(w.percents) for w in self.wanted]
        totals = [int(c or 0) for c in counted[: len(self.wanted)]]
        belows = [int(c or 0) for c in counted[len(self.wanted) :]]
        wanted: list[tuple[_Bracket, int, int]] = []
        for b, below_n in zip(self._brackets, belows, strict=True):
            n = totals[b.wanted]
            if n == 0:
                continue
            rank = nearest_rank(b.percent, n)
            if below_n < rank and b.estimate <= self.bracket_limit:
                wanted.append((b, rank, below_n))
            else:  # the rank is below the bracket, or the bracket is too big to fetch (ties)
                results[b.wanted][b.percent] = await self._offset(db, b.wanted, rank)
        if not wanted:
            return results
        columns = [w.column for w in self.wanted]
        ranges = [_in_bracket(columns[b.wanted], b) for b, _, _ in wanted]
        rows = (await db.execute(select(*columns).where(*self._rows(), or_(*ranges)))).all()
        # Sort each column's fetched values once; a bracket is then a slice found by bisect.
        fetched = [sorted(r[i] for r in rows if r[i] is not None) for i in range(len(columns))]
        for b, rank, below_n in wanted:
            values = fetched[b.wanted]
            start = bisect_left(values, b.lo) if b.lo is not None else 0
            end = bisect_right(values, b.hi) if b.hi is not None else len(values)
            if rank <= below_n + (end - start):  # proven: the rank falls inside the bracket
                results[b.wanted][b.percent] = values[start + rank - below_n - 1]
            else:
                results[b.wanted][b.percent] = await self._offset(db, b.wanted, rank)
        return results

    def _rows(self) -> list[ColumnElement[bool]]:
        return [*self.filters, *self.where]

    async def _fetch_all(self, db: Db) -> list[dict[int, float | None]]:
        columns = [w.column for w in self.wanted]
        rows = (await db.execute(select(*columns).where(*self._rows()))).all()
        return [
            pick(sorted(r[i] for r in rows if r[i] is not None), w.percents)
            for i, w in enumerate(self.wanted)
        ]

    async def _sample(self, db: Db, low_id: int, high_id: int, rows: int) -> list[Any]:
        columns = [w.column for w in self.wanted]
        sample: list[Any] = []
        if self.in_scope is not None:
            # Evenly spaced ids, fetched by primary key (no scan), kept if in scope.
            step = max(1, (high_id - low_id + 1) // self.sample_size)
            ids = list(range(low_id, high_id + 1, step))
            query = select(*columns, U.created_at, U.user_id, U.status).where(U.id.in_(ids))
            sample = [r for r in (await db.execute(query)).all() if self.in_scope(r)]
        if len(sample) < min(rows, self.sample_size) // 4:
            # The rows are sparse among the ids (a filtered window): sample by id modulo.
            modulo = max(2, rows // self.sample_size)
            query = select(*columns).where(*self._rows(), U.id % modulo == 0)
            sample = list((await db.execute(query)).all())
        return sample

    async def _offset(self, db: Db, index: int, rank: int) -> float | None:
        column = self.wanted[index].column
        query = (
            select(column)
            .where(*self._rows(), column.is_not(None))
            .order_by(column)
            .limit(1)
            .offset(rank - 1)
        )
        value = (await db.execute(query)).scalar()
        return float(value) if value is not None else None


def _bracket(index: int, percent: int, sample: Sequence[float], scale: float) -> _Bracket:
    m = len(sample)
    if m == 0:
        return _Bracket(index, percent, None, None, math.inf)
    q = percent / 100
    # The percentile's position in the sample, widened by four standard deviations of the
    # sample's binomial error so the bracket almost always holds the rank.
    centre = q * m
    margin = math.ceil(4 * math.sqrt(m * q * (1 - q))) + 2
    lo_index = math.floor(centre) - margin
    hi_index = math.ceil(centre) + margin
    lo = sample[lo_index] if lo_index >= 0 else None
    hi = sample[hi_index] if hi_index < m else None
    # Rows of the sample inside the bracket (ties at its ends included), scaled to the window.
    first = bisect_left(sample, lo) if lo is not None else 0
    last = bisect_right(sample, hi) if hi is not None else m
    return _Bracket(index, percent, lo, hi, (last - first) * scale)


def _in_bracket(column: Column, b: _Bracket) -> ColumnElement[bool]:
    parts: list[ColumnElement[bool]] = [column.is_not(None)]
    if b.lo is not None:
        parts.append(column >= b.lo)
    if b.hi is not None:
        parts.append(column <= b.hi)
    return and_(*parts)
