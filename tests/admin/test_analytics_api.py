"""The analytics API against a seeded ledger; every expected figure is computed here in Python."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.admin import analytics
from kiban.models import UsageRecord, User
from kiban.usage import Selection, Wanted
from tests.admin.conftest import expected_figures, nearest_rank
from tests.factories import T0, LedgerSpec, make_records, write_records

pytestmark = pytest.mark.usefixtures("app")


def _window(start: Any, end: Any) -> dict[str, str]:
    return {"from": start.isoformat(), "to": end.isoformat()}


def _assert_figures(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key, value in want.items():
        if key == "cost_usd":
            assert Decimal(got[key]) == value, key
        elif isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=1e-9), key
        else:
            assert got[key] == value, key


# 600 records, then two of the user exactly on the edges of a window: the start is included,
# the end is not.
LEDGER = LedgerSpec(600, ("user", "admin", None), also_at=(T0, T0 + timedelta(hours=24)))


# Windows of whole hours (read from the rollup), partial hours at both ends (the ledger), and
# inside a single hour (the ledger alone).
MINUTE = timedelta(minutes=1)
WINDOWS = {
    "whole hours": (T0, T0 + timedelta(hours=24)),
    "ragged ends": (T0 + 17 * MINUTE, T0 + timedelta(hours=26, minutes=5)),
    "inside one hour": (T0 + 10 * MINUTE, T0 + 50 * MINUTE),
}
DAY_WINDOWS = {
    "whole days": (T0, T0 + timedelta(days=3)),
    "ragged days": (T0 + timedelta(hours=3, minutes=41), T0 + timedelta(days=2, hours=9)),
}


@pytest.mark.parametrize("name", WINDOWS)
async def test_summary_matches_python_over_the_window(
    client: httpx.AsyncClient, admin_headers: dict[str, str], ledger: list[UsageRecord], name: str
) -> None:
    start, end = WINDOWS[name]
    r = await client.get(
        "/admin/analytics/summary", params=_window(start, end), headers=admin_headers
    )
    assert r.status_code == 200, r.text
    inside = [rec for rec in ledger if start <= rec.created_at < end]
    assert 0 < len(inside) < len(ledger)
    _assert_figures(r.json(), expected_figures(inside))


async def test_summary_percentiles_by_sampling_equal_the_exact_ones(
    app: FastAPI, ledger: list[UsageRecord]
) -> None:
    window = analytics.Window(T0, T0 + timedelta(days=3))
    want = expected_figures(ledger)
    async with app.state.sessionmaker() as session:
        # Force the sampling path (tiny sample, brackets proven by counting) ...
        sampled = await analytics.summary(session, window, exact_fetch_limit=0, sample_size=40)
        # ... and the ORDER BY/OFFSET fallback (no bracket is small enough).
        fallback = await analytics.summary(
            session, window, exact_fetch_limit=0, sample_size=40, bracket_limit=1
        )
    for result in (sampled, fallback):
        _assert_figures(result.model_dump(mode="json"), want)


async def test_selection_proves_brackets_with_counts_when_sampling(
    app: FastAPI, ledger: list[UsageRecord]
) -> None:
    window = analytics.Window(T0, T0 + timedelta(days=3))
    column = UsageRecord.response_time_ms
    selection = Selection(
        window.filters(),
        [UsageRecord.status != "rejected"],
        [Wanted(column, (1, 50, 95, 99, 100))],
        exact_fetch_limit=0,
        sample_size=60,
    )
    async with app.state.sessionmaker() as session:
        await selection.prepare(session)
        counts = selection.count_columns()
        assert len(counts) == 1 + 5  # the total, then the count below each bracket
        row = (await session.execute(select(*counts).where(*window.filters()))).one()
        (got,) = await selection.finish(session, row)
    values = [r.response_time_ms for r in ledger if r.status != "rejected"]
    assert got == {p: nearest_rank(values, p) for p in (1, 50, 95, 99, 100)}


async def test_heavy_ties_fall_back_and_stay_exact(app: FastAPI, session: AsyncSession) -> None:
    records = make_records(300, [None], seed=3)
    for i, r in enumerate(records):
        r.response_time_ms = 42.0 if i % 10 else 7.0  # nine in ten values are the same
    await write_records(session, records)
    window = analytics.Window(T0, T0 + timedelta(days=3))
    async with app.state.sessionmaker() as s:
        got = await analytics.summary(
            s, window, exact_fetch_limit=0, sample_size=50, bracket_limit=20
        )
    _assert_figures(got.model_dump(mode="json"), expected_figures(records))


async def test_summary_of_one_user_by_sampling_matches_python(
    app: FastAPI, ledger: list[UsageRecord], user: User
) -> None:
    window = analytics.Window(T0, T0 + timedelta(days=3))
    mine = [r for r in ledger if r.user_id == user.id]
    async with app.state.sessionmaker() as session:
        # The user's rows are sparse among the ids: the sample falls back to id modulo.
        got = await analytics.summary(
            session, window, user_id=user.id, exact_fetch_limit=0, sample_size=200
        )
    _assert_figures(got.model_dump(mode="json"), expected_figures(mine))


async def test_summary_of_an_empty_window_is_zero_not_an_error(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    r = await client.get("/admin/analytics/summary", headers=admin_headers)
    assert r.status_code == 200
    body = r.json()
    assert body["requests"] == 0
    assert Decimal(body["cost_usd"]) == 0
    assert body["latency_p50_ms"] is None
    assert body["error_rate"] is None


async def test_timeseries_per_hour_and_model_matches_python(
    client: httpx.AsyncClient, admin_headers: dict[str, str], ledger: list[UsageRecord]
) -> None:
    start, end = T0 + timedelta(minutes=30), T0 + timedelta(hours=6)
    r = await client.get(
        "/admin/analytics/timeseries",
        params={**_window(start, end), "interval": "hour", "group_by": "model"},
        headers=admin_headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    inside = [rec for rec in ledger if start <= rec.created_at < end]
    assert {s["group"] for s in body["series"]} == {rec.model for rec in inside}
    for series in body["series"]:
        assert len(series["points"]) == 6  # 00:00 (partly in the window) .. 05:00
        for point in series["points"]:
            hour = point["bucket"]
            members = [
                rec
                for rec in inside
                if rec.model == series["group"]
                and rec.created_at.replace(minute=0, second=0, microsecond=0).isoformat()
                == hour.replace("Z", "+00:00")
            ]
            _assert_figures(point, expected_figures(members))


@pytest.mark.parametrize("name", DAY_WINDOWS)
async def test_timeseries_per_day_and_plan_matches_python(
    client: httpx.AsyncClient, admin_headers: dict[str, str], ledger: list[UsageRecord], name: str
) -> None:
    start, end = DAY_WINDOWS[name]
    params = {**_window(start, end), "interval": "day", "group_by": "plan"}
    r = await client.get("/admin/analytics/timeseries", params=params, headers=admin_headers)
    body = r.json()
    inside = [rec for rec in ledger if start <= rec.created_at < end]
    assert {s["group"] for s in body["series"]} == {rec.plan for rec in inside}
    for series in body["series"]:
        for point in series["points"]:
            day = point["bucket"][:10]
            members = [
                rec
                for rec in inside
                if rec.plan == series["group"] and rec.created_at.date().isoformat() == day
            ]
            _assert_figures(point, expected_figures(members))


@pytest.mark.parametrize("name", DAY_WINDOWS)
async def test_top_users_by_cost_tokens_and_requests(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    ledger: list[UsageRecord],
    user: User,
    name: str,
) -> None:
    start, end = DAY_WINDOWS[name]
    window = _window(start, end)
    for by, metric in (
        ("cost", lambda rs: sum((r.estimated_cost or Decimal(0)) for r in rs)),
        ("tokens", lambda rs: sum(r.total_tokens for r in rs)),
        ("requests", len),
    ):
        r = await client.get(
            "/admin/analytics/top-users",
            params={**window, "by": by, "limit": 2},
            headers=admin_headers,
        )
        assert r.status_code == 200, r.text
        users = r.json()["users"]
        per_user: dict[str | None, list[UsageRecord]] = {}
        for rec in ledger:
            if start <= rec.created_at < end:
                per_user.setdefault(str(rec.user_id) if rec.user_id else None, []).append(rec)
        ranked = sorted(per_user.items(), key=lambda kv: metric(kv[1]), reverse=True)[:2]
        assert [u["user_id"] for u in users] == [k for k, _ in ranked], by
        top = users[0]
        records = per_user[top["user_id"]]
        assert top["requests"] == len(records)
        assert top["total_tokens"] == sum(r.total_tokens for r in records)
        assert Decimal(top["cost_usd"]) == sum((r.estimated_cost or Decimal(0)) for r in records)
    emails = {u["email"] for u in users}
    assert user.email in emails or None in emails or len(emails) == 2


@pytest.mark.parametrize("name", WINDOWS)
async def test_mix_per_endpoint(
    client: httpx.AsyncClient, admin_headers: dict[str, str], ledger: list[UsageRecord], name: str
) -> None:
    start, end = WINDOWS[name]
    r = await client.get(
        "/admin/analytics/mix",
        params={**_window(start, end), "by": "endpoint"},
        headers=admin_headers,
    )
    got = {m["group"]: (m["requests"], Decimal(m["cost_usd"])) for m in r.json()}
    want: dict[str, tuple[int, Decimal]] = {}
    for rec in ledger:
        if start <= rec.created_at < end:
            n, cost = want.get(rec.endpoint, (0, Decimal(0)))
            want[rec.endpoint] = (n + 1, cost + (rec.estimated_cost or 0))
    assert got == want


async def test_analytics_need_an_admin(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    assert (await client.get("/admin/analytics/summary")).json()["error"]["code"] == (
        "missing_credentials"
    )
    r = await client.get("/admin/analytics/summary", headers=user_headers)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "role_required"


async def test_bad_windows_get_clear_errors(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    r = await client.get(
        "/admin/analytics/summary",
        params=_window(T0, T0 - timedelta(hours=1)),
        headers=admin_headers,
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_window"
    r = await client.get(
        "/admin/analytics/timeseries",
        params={**_window(T0, T0 + timedelta(days=400)), "interval": "hour"},
        headers=admin_headers,
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "too_many_buckets"
    r = await client.get(
        "/admin/analytics/summary", params={"from": "yesterday"}, headers=admin_headers
    )
    assert r.status_code == 422
    # Times at the ends of the calendar: a 400, not an overflow (a 500).
    for params in (
        {"to": "0001-01-01T00:00:00Z"},  # no week before it
        {"from": "0001-01-01T00:00:00+05:00"},  # no UTC time
        {"from": "9999-12-31T22:00:00Z", "to": "9999-12-31T23:59:59Z"},  # no next day
    ):
        for path in ("summary", "top-users"):
            r = await client.get(f"/admin/analytics/{path}", params=params, headers=admin_headers)
            assert r.status_code == 400, (params, r.text)
            assert r.json()["error"]["code"] == "invalid_window"


async def test_naive_times_are_utc(
    client: httpx.AsyncClient, admin_headers: dict[str, str], ledger: list[UsageRecord]
) -> None:
    params = {"from": "2026-11-02T00:00:00", "to": "2026-11-03T00:00:00"}
    r = await client.get("/admin/analytics/summary", params=params, headers=admin_headers)
    want = sum(1 for rec in ledger if T0 <= rec.created_at < T0 + timedelta(days=1))
    assert r.json()["requests"] == want
