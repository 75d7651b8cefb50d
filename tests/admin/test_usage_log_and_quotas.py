"""The usage-log API, the streamed CSV export and quota consumption per plan."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.core import clock
from kiban.models import UsageRecord, User
from kiban.models.quota import QuotaPeriod
from tests.conftest import auth_headers, create_user
from tests.factories import T0, LedgerSpec, spend

WINDOW = {"from": T0.isoformat(), "to": (T0 + timedelta(days=3)).isoformat()}


LEDGER = LedgerSpec(300, ("user", "admin", None))


async def test_usage_log_filters_and_pages_newest_first(
    client: httpx.AsyncClient, admin_headers: dict[str, str], ledger: list[UsageRecord], user: User
) -> None:
    params = {**WINDOW, "user_id": str(user.id), "status": ["ok", "error"], "limit": 25}
    seen: list[int] = []
    before = None
    while True:
        r = await client.get(
            "/admin/analytics/usage",
            params={**params, **({"before": before} if before else {})},
            headers=admin_headers,
        )
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [e["id"] for e in page["entries"]]
        assert all(e["email"] == user.email for e in page["entries"])
        before = page["next_before"]
        if before is None:
            break
    want = sorted(
        (r.id for r in ledger if r.user_id == user.id and r.status in ("ok", "error")), reverse=True
    )
    assert seen == want
    assert len(want) > 50


async def test_a_cursor_beyond_the_id_range_is_a_validation_error(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    for before in (2**63, -(2**63) - 1):  # past BIGINT: the driver would overflow (a 500)
        r = await client.get(
            "/admin/analytics/usage", params={"before": before}, headers=admin_headers
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "validation_error"


async def test_export_streams_every_record_of_the_window_as_csv(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    ledger: list[UsageRecord],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kiban.admin import usage_log

    monkeypatch.setattr(usage_log, "EXPORT_BATCH_ROWS", 40)
    params = {"from": T0.isoformat(), "to": (T0 + timedelta(days=1)).isoformat()}
    chunks = []
    async with client.stream(
        "GET", "/admin/analytics/export.csv", params=params, headers=admin_headers
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/csv")
        assert "attachment" in r.headers["content-disposition"]
        async for chunk in r.aiter_raw():
            chunks.append(chunk)
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    want = sorted(
        (r for r in ledger if T0 <= r.created_at < T0 + timedelta(days=1)), key=lambda r: r.id
    )
    assert [int(row["id"]) for row in rows] == [r.id for r in want]
    for row, rec in zip(rows, want, strict=True):
        assert row["request_id"] == rec.request_id
        assert datetime.fromisoformat(row["created_at"]) == rec.created_at
        assert int(row["total_tokens"]) == rec.total_tokens
        assert row["status"] == rec.status
        cost = Decimal(row["estimated_cost"]) if row["estimated_cost"] else None
        assert cost == rec.estimated_cost


async def test_export_is_produced_batch_by_batch(
    app: FastAPI, ledger: list[UsageRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiban.admin import usage_log
    from kiban.admin.analytics import Window

    monkeypatch.setattr(usage_log, "EXPORT_BATCH_ROWS", 40)
    window = Window(T0, T0 + timedelta(days=3))
    chunks = [c async for c in usage_log.export_csv(app.state.engine, window)]
    assert len(chunks) == 1 + -(-len(ledger) // 40)  # the header, then one chunk per batch
    assert max(len(c) for c in chunks) < 40 * 400


async def test_export_needs_an_admin(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    r = await client.get("/admin/analytics/export.csv", headers=user_headers)
    assert r.status_code == 403


async def test_quota_consumption_per_plan(
    app: FastAPI, client: httpx.AsyncClient, admin: User, session: AsyncSession
) -> None:
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    month = datetime(2026, 11, 1, tzinfo=UTC)
    near = await create_user(session)
    low = await create_user(session)
    full = await create_user(session)
    granted = await create_user(session)
    pro = await create_user(session, plan="pro")
    free_allowance = app.state.plans.plans["free"].monthly_tokens
    await spend(session, near, int(free_allowance * 0.85), now - timedelta(days=1))
    await spend(session, near, free_allowance, now - timedelta(days=1), status="rejected")
    await spend(session, low, 10, now - timedelta(hours=1))
    await spend(session, low, free_allowance, month - timedelta(days=2))  # last month's
    await spend(session, full, free_allowance, now - timedelta(days=3))
    await spend(session, granted, free_allowance, now - timedelta(days=3))
    session.add(
        QuotaPeriod(
            user_id=granted.id,
            period_start=month,
            period_end=datetime(2026, 12, 1, tzinfo=UTC),
            extra_tokens=free_allowance,
        )
    )
    await spend(session, pro, 1000, now - timedelta(days=3))
    with clock.frozen(now):
        headers = auth_headers(app, admin)
        r = await client.get("/admin/analytics/quotas", headers=headers)
    assert r.status_code == 200, r.text
    plans = {p["plan"]: p for p in r.json()["plans"]}
    assert plans["free"]["users_with_usage"] == 4
    assert plans["free"]["tokens_used"] == int(free_allowance * 0.85) + 10 + 2 * free_allowance
    assert plans["free"]["near_limit"] == 2  # near, full (granted is at half of its larger limit)
    assert plans["free"]["at_limit"] == 1
    assert plans["free"]["near_limit_share"] == 0.5
    assert plans["pro"]["users_with_usage"] == 1
    assert plans["pro"]["near_limit"] == 0
