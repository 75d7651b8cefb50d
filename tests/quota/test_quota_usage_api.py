"""Usage visibility and admin control: /me/usage, admin usage, PATCH plan and quota_override."""

from __future__ import annotations

from datetime import datetime

from fastapi import FastAPI
from httpx import AsyncClient

from kiban.billing.entitlements import calendar_month
from kiban.core import clock
from kiban.models import User
from tests.conftest import auth_headers


async def test_me_usage_reports_plan_period_and_counters(
    app: FastAPI, client: AsyncClient, user: User, user_headers: dict[str, str]
) -> None:
    chat = await client.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 20,
        },
        headers=user_headers,
    )
    assert chat.status_code == 200, chat.text
    response = await client.get("/me/usage", headers=user_headers)
    assert response.status_code == 200, response.text
    body = response.json()
    start, end = calendar_month(clock.now())
    assert body["plan"]["name"] == "free"
    assert body["plan"]["models"] == ["extractive", "gpt-4o*"]
    assert body["period"]["source"] == "default"
    assert datetime.fromisoformat(body["period"]["start"]) == start
    assert datetime.fromisoformat(body["period"]["end"]) == end
    assert body["period"]["resets_in_seconds"] > 0
    tokens = body["tokens"]
    assert tokens["limit"] == 1000
    assert tokens["used"] == chat.json()["usage"]["total_tokens"]
    assert tokens["reserved"] == 0
    assert tokens["remaining"] == 1000 - tokens["used"]
    assert body["cost"]["limit_usd"] is None
    assert body["rate_limit"]["requests_per_minute"] == 1000
    assert body["rate_limit"]["requests_remaining"] in (999, 1000)  # 1000 if a minute turned


async def test_admin_sets_plan_and_extra_tokens(
    app: FastAPI, client: AsyncClient, user: User, admin_headers: dict[str, str]
) -> None:
    patched = await client.patch(
        f"/admin/users/{user.id}",
        json={"plan": "pro", "quota_override": 5000},
        headers=admin_headers,
    )
    assert patched.status_code == 200, patched.text
    usage = await client.get(f"/admin/users/{user.id}/usage", headers=admin_headers)
    assert usage.status_code == 200, usage.text
    body = usage.json()
    assert body["plan"]["name"] == "pro"
    assert body["period"]["source"] == "admin"
    assert body["tokens"]["extra"] == 5000
    assert body["tokens"]["limit"] == 1_000_000 + 5000
    assert body["cost"]["limit_usd"] == "2.5"
    # The user sees the same, and the pro plan's models now work.
    mine = await client.get("/me/usage", headers=auth_headers(app, user))
    assert mine.json()["tokens"]["limit"] == 1_005_000
    # Back to the default plan; the grant stays for this period.
    reset = await client.patch(
        f"/admin/users/{user.id}", json={"plan": None}, headers=admin_headers
    )
    assert reset.status_code == 200
    body = (await client.get(f"/admin/users/{user.id}/usage", headers=admin_headers)).json()
    assert (body["plan"]["name"], body["tokens"]["limit"]) == ("free", 6000)


async def test_admin_cannot_set_an_unknown_plan(
    client: AsyncClient, user: User, admin_headers: dict[str, str]
) -> None:
    response = await client.patch(
        f"/admin/users/{user.id}", json={"plan": "platinum"}, headers=admin_headers
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unknown_plan"
    assert error["plans"] == ["free", "pro"]
    negative = await client.patch(
        f"/admin/users/{user.id}", json={"quota_override": -1}, headers=admin_headers
    )
    assert negative.status_code == 422


async def test_usage_of_others_is_admin_only(
    client: AsyncClient, user: User, admin: User, user_headers: dict[str, str]
) -> None:
    response = await client.get(f"/admin/users/{admin.id}/usage", headers=user_headers)
    assert response.status_code == 403
    unauthenticated = await client.get("/me/usage")
    assert unauthenticated.status_code == 401


async def test_usage_of_a_missing_user_is_404(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get(
        "/admin/users/00000000-0000-0000-0000-000000000000/usage", headers=admin_headers
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_such_user"


async def test_quota_exceeded_retry_after_counts_down_to_the_period_end(
    app: FastAPI, client: AsyncClient, user: User
) -> None:
    # Frozen mid-month: the refusal counts down to the period's end, to the second.
    start, end = calendar_month(clock.now())
    frozen_at = start + (end - start) / 2
    with clock.frozen(frozen_at.replace(microsecond=0)):
        headers = auth_headers(app, user)
        response = await client.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "fox " * 480}],
                "max_tokens": 50,
            },
            headers=headers,
        )
        assert response.status_code == 200, response.text
        again = await client.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "fox " * 480}],
                "max_tokens": 50,
            },
            headers=headers,
        )
        assert again.status_code == 429
        expected = int((end - clock.now()).total_seconds())
        assert again.headers["Retry-After"] == str(expected)
        assert again.headers["X-Quota-Reset"] == str(expected)
