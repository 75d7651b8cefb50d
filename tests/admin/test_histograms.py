"""Exact percentiles located with the hourly histograms, checked against plain Python."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.admin import analytics
from kiban.admin.schemas import Interval
from kiban.models import UsageHistogramDaily, UsageHistogramHourly, UsageRecord
from kiban.usage import EDGES, Metric, bin_of, bin_range, histograms
from tests.admin.conftest import expected_figures, nearest_rank
from tests.factories import T0, LedgerSpec, make_records, write_records

PERCENTS = (1, 50, 95, 99, 100)
METRICS = (
    Metric(histograms.LATENCY, UsageRecord.response_time_ms, PERCENTS),
    Metric(histograms.TTFT, UsageRecord.time_to_first_token_ms, PERCENTS),
)
MINUTE = timedelta(minutes=1)
WINDOWS = {
    "whole hours": (T0, T0 + timedelta(hours=48)),
    "ragged ends": (T0 + 17 * MINUTE, T0 + timedelta(hours=50, minutes=5)),
    "inside one hour": (T0 + 10 * MINUTE, T0 + 50 * MINUTE),
}


def test_bins_are_fixed_narrow_and_hold_their_values() -> None:
    assert EDGES[0] == 0.0
    assert EDGES[-1] >= 1e8
    assert all(a < b for a, b in itertools.pairwise(EDGES))
    # Past the first edges, no bin is wider than 5% (plus the four-digit rounding) of its values.
    assert all(b / a <= 1.0511 for a, b in itertools.pairwise(EDGES[2:]))
    for k, edge in enumerate(EDGES):
        assert bin_of(edge) == k + 1  # an edge opens the bin above it
    rnd = random.Random(5)
    for value in [-1.0, 0.0, 1e-9, 3.0, 1e12, *(rnd.lognormvariate(5, 3) for _ in range(2_000))]:
        lo, hi = bin_range(bin_of(value))
        assert lo is None or lo <= value
        assert hi is None or value < hi


LEDGER = LedgerSpec(800, ("user", None), seed=41)


def _expected(records: list[UsageRecord], start: object, end: object) -> list[dict[int, float]]:
    inside = [r for r in records if start <= r.created_at < end and r.status != "rejected"]  # type: ignore[operator]
    latency = [r.response_time_ms for r in inside]
    ttft = [r.time_to_first_token_ms for r in inside if r.time_to_first_token_ms is not None]
    return [
        {p: nearest_rank(latency, p) for p in PERCENTS},
        {p: nearest_rank(ttft, p) for p in PERCENTS},
    ]


@pytest.mark.parametrize("name", WINDOWS)
@pytest.mark.parametrize("fetch", ["value", "time", "auto"])
async def test_percentiles_equal_pythons_whichever_way_the_bins_are_fetched(
    session: AsyncSession, ledger: list[UsageRecord], name: str, fetch: histograms.Fetch
) -> None:
    start, end = WINDOWS[name]
    got = await histograms.percentiles(session, start, end, METRICS, fetch=fetch)
    assert got is not None
    assert got[None] == _expected(ledger, start, end)


async def test_percentiles_per_bucket_equal_pythons(
    session: AsyncSession, ledger: list[UsageRecord]
) -> None:
    start, end = WINDOWS["ragged ends"]
    cut = analytics.histogram_buckets(session, Interval.DAY)
    got = await histograms.percentiles(session, start, end, METRICS, cut, fetch="value")
    assert got is not None
    days = sorted(
        {r.created_at.strftime("%Y-%m-%d") for r in ledger if start <= r.created_at < end}
    )
    assert sorted(got) == days
    for key in days:
        members = [r for r in ledger if r.created_at.strftime("%Y-%m-%d") == key]
        assert got[key] == _expected(members, start, end), key


@pytest.mark.parametrize("interval", ["hour", "day"])
async def test_timeseries_without_groups_matches_python(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    ledger: list[UsageRecord],
    interval: str,
) -> None:
    start, end = WINDOWS["ragged ends"]
    params = {"from": start.isoformat(), "to": end.isoformat(), "interval": interval}
    r = await client.get("/admin/analytics/timeseries", params=params, headers=admin_headers)
    assert r.status_code == 200, r.text
    (series,) = r.json()["series"]
    width = 13 if interval == "hour" else 10
    for point in series["points"]:
        bucket = point["bucket"].replace("T", " ")[:width]
        members = [
            rec
            for rec in ledger
            if start <= rec.created_at < end and rec.created_at.isoformat(sep=" ")[:width] == bucket
        ]
        want = expected_figures(members)
        for key in ("requests", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
            assert point[key] == want[key], (bucket, key)
        assert (point["ttft_p50_ms"], point["ttft_p95_ms"]) == (
            want["ttft_p50_ms"],
            want["ttft_p95_ms"],
        )


async def test_a_histogram_that_disagrees_with_the_ledger_is_not_trusted(
    app: FastAPI, session: AsyncSession, ledger: list[UsageRecord]
) -> None:
    # A ledger changed around the writer: the bin that holds the median latency counts one
    # value more than the ledger has.
    start, end = WINDOWS["whole hours"]
    want = expected_figures([r for r in ledger if start <= r.created_at < end])
    for H, time in ((UsageHistogramHourly, "hour"), (UsageHistogramDaily, "day")):
        median_bin = (H.metric == "latency", H.bin == bin_of(want["latency_p50_ms"]))
        first = await session.scalar(select(func.min(getattr(H, time))).where(*median_bin))
        first_bin = (getattr(H, time) == first, *median_bin)
        await session.execute(update(H).where(*first_bin).values(count=H.count + 1))
    await session.commit()
    assert await histograms.percentiles(session, start, end, METRICS) is None
    # The summary then finds its percentiles the slow way, still exact.
    async with app.state.sessionmaker() as s:
        got = await analytics.summary(s, analytics.Window(start, end))
    assert (got.latency_p50_ms, got.latency_p95_ms, got.latency_p99_ms) == (
        want["latency_p50_ms"],
        want["latency_p95_ms"],
        want["latency_p99_ms"],
    )
    assert (got.ttft_p50_ms, got.ttft_p95_ms) == (want["ttft_p50_ms"], want["ttft_p95_ms"])


async def test_heavy_ties_in_one_bin_stay_exact(session: AsyncSession) -> None:
    # Heavy ties: most values share one bin (and one value); the fetch still proves each rank.
    records = make_records(400, [None], seed=8)
    for i, r in enumerate(records):
        r.response_time_ms = 2.5 if i % 7 else 2.51
    await write_records(session, records)
    start, end = T0, T0 + timedelta(days=4)
    got = await histograms.percentiles(session, start, end, METRICS[:1], fetch="value")
    assert got is not None
    assert got[None][0] == _expected(records, start, end)[0]


@pytest.mark.parametrize(
    ("parts", "spans"), [(2, 1), (1, 64)], ids=["2 parts, whole window", "1 part, spans"]
)
async def test_large_fetches_are_split_and_stay_exact(
    session: AsyncSession,
    ledger: list[UsageRecord],
    monkeypatch: pytest.MonkeyPatch,
    parts: int,
    spans: int,
) -> None:
    # SQLite refuses a UNION of more than 500 parts and an OR nested 1000 deep: a long hourly
    # series is fetched in several statements, and a bin wanted by many hours over the window.
    # Tiny limits here take those paths on a small ledger.
    monkeypatch.setattr(histograms, "PARTS_PER_STATEMENT", parts)
    monkeypatch.setattr(histograms, "MAX_SPANS", spans)
    start, end = WINDOWS["ragged ends"]
    cut = analytics.histogram_buckets(session, Interval.HOUR)
    got = await histograms.percentiles(session, start, end, METRICS, cut, fetch="value")
    assert got is not None
    for key, values in got.items():
        hour = analytics._parse_bucket(key)
        members = [r for r in ledger if hour <= r.created_at < hour + timedelta(hours=1)]
        assert values == _expected(members, start, end), key


async def test_bins_too_full_to_fetch_leave_it_to_the_slower_exact_ways(
    app: FastAPI, session: AsyncSession, ledger: list[UsageRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(histograms, "FETCH_LIMIT", 1)
    start, end = WINDOWS["whole hours"]
    assert await histograms.percentiles(session, start, end, METRICS) is None
    async with app.state.sessionmaker() as s:
        got = await analytics.summary(s, analytics.Window(start, end))
    want = expected_figures([r for r in ledger if start <= r.created_at < end])
    assert (got.latency_p50_ms, got.latency_p99_ms, got.ttft_p95_ms) == (
        want["latency_p50_ms"],
        want["latency_p99_ms"],
        want["ttft_p95_ms"],
    )


async def test_a_short_window_in_a_long_history_is_read_by_time(
    session: AsyncSession, ledger: list[UsageRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bin's value-index range spans the whole ledger (800 records here): reading 10 wanted
    # values by value reads about 10 x 800 / window entries, against the window's own rows.
    monkeypatch.setattr(histograms, "TIME_ENTRY_COST", 1)
    wanted = {(None, 0, 5)}
    whole_window = {(None, 0): {5: 10, 6: 790}}  # the window is the whole history
    short_window = {(None, 0): {5: 10, 6: 40}}  # 50 of the 800 records
    assert not await histograms._by_time(session, wanted, whole_window)
    assert await histograms._by_time(session, wanted, short_window)
