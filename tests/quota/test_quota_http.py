"""Quotas through the real HTTP app and the fake upstream: atomic, and one ledger record each."""

from __future__ import annotations

import asyncio
import math
import uuid
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from kiban.app import create_app
from kiban.billing.entitlements import calendar_month
from kiban.core import clock
from kiban.core.db import create_engine
from kiban.models import UsageRecord, User
from kiban.quota.store import Reservation
from tests.conftest import RunningApp, auth_headers, create_user, make_client
from tests.factories import ledger

QUESTION = [{"role": "user", "content": "What does the fox do?"}]


async def chat(
    client: httpx.AsyncClient, headers: dict[str, str], **body: object
) -> httpx.Response:
    payload = {"model": "gpt-4o-mini", "messages": QUESTION, **body}
    return await client.post("/v1/chat/completions", json=payload, headers=headers)


async def use_tokens(app: FastAPI, user: User, tokens: int) -> None:
    """Spend ``tokens`` of the user's current period, as a settled request would."""
    now = clock.now()
    start, end = calendar_month(now)
    store = app.state.admission.store
    reservation = Reservation(
        id=uuid.uuid4(),
        user_id=user.id,
        period_start=start,
        period_end=end,
        tokens=tokens,
        cost_nanos=0,
        token_limit=10**9,
        cost_limit_nanos=None,
        requests_per_minute=10**9,
        tokens_per_minute=None,
        now=now,
        expires_at=now + timedelta(minutes=1),
    )
    taken = await store.reserve(reservation)
    assert taken.refused is None
    await store.settle(reservation, taken.handle, used_tokens=tokens, used_cost_nanos=0)


async def test_concurrent_requests_never_spend_past_the_limit(app: FastAPI, user: User) -> None:
    headers = auth_headers(app, user)
    start, end = calendar_month(clock.now())
    # Little quota left: 1000 tokens, of which 700 are already used this month.
    await use_tokens(app, user, 700)
    async with make_client(app) as client:
        warmup = await chat(client, headers, max_tokens=50)
        assert warmup.status_code == 200, warmup.text
        state = await app.state.admission.store.state(user.id, start)
        assert state.used_tokens > 700
        responses = await asyncio.gather(*(chat(client, headers, max_tokens=50) for _ in range(40)))

    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 40
    assert ok
    assert refused
    expected_retry = math.ceil((end - clock.now()).total_seconds())
    for response in refused:
        error = response.json()["error"]
        assert error["code"] == "quota_exceeded"
        assert error["limit"] == 1000
        assert error["resets_at"] == end.isoformat().replace("+00:00", "Z")
        assert 0 <= error["used"] <= 1000
        assert abs(int(response.headers["Retry-After"]) - expected_retry) <= 5
    for response in ok:
        assert response.headers["X-Quota-Limit"] == "1000"
        assert int(response.headers["X-RateLimit-Remaining"]) < 1000

    records = await ledger(app)
    assert len(records) == 41  # exactly one per request
    assert sum(r.status == "ok" for r in records) == len(ok) + 1
    assert sum(r.status == "rejected" and r.error_code == "quota_exceeded" for r in records) == len(
        refused
    )
    state = await app.state.admission.store.state(user.id, start)
    assert state.reserved_tokens == 0
    assert state.used_tokens == 700 + sum(r.total_tokens for r in records if r.status == "ok")
    assert state.used_tokens <= 1000


async def test_every_ai_response_carries_limit_headers(app: FastAPI, user: User) -> None:
    async with make_client(app) as client:
        response = await chat(client, auth_headers(app, user), max_tokens=20)
    assert response.status_code == 200, response.text
    for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert int(response.headers[name]) >= 0
    assert response.headers["X-RateLimit-Limit"] == "1000"
    assert response.headers["X-RateLimit-Remaining"] == "999"
    assert 1 <= int(response.headers["X-RateLimit-Reset"]) <= 60
    assert response.headers["X-Quota-Limit"] == "1000"
    assert 0 < int(response.headers["X-Quota-Remaining"]) < 1000
    assert int(response.headers["X-Quota-Reset"]) > 0


async def test_model_outside_the_plan_is_refused_and_recorded(app: FastAPI, user: User) -> None:
    async with make_client(app) as client:
        response = await chat(client, auth_headers(app, user), model="gpt-4.1")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "model_not_in_plan"
    assert error["plan"] == "free"
    [record] = await ledger(app)
    assert (record.status, record.error_code) == ("rejected", "model_not_in_plan")


async def test_rate_limit_per_minute(app: FastAPI) -> None:
    async with app.state.sessionmaker() as session:
        pro = await create_user(session, plan="pro")  # 5 requests a minute
    async with make_client(app) as client:
        with clock.frozen(clock.now().replace(second=10, microsecond=0)):
            headers = auth_headers(app, pro)  # issued at the frozen time
            statuses = [(await chat(client, headers, max_tokens=10)) for _ in range(6)]
    assert [r.status_code for r in statuses] == [200] * 5 + [429]
    limited = statuses[-1]
    assert limited.json()["error"]["code"] == "rate_limited"
    assert limited.headers["Retry-After"] == "50"
    assert limited.headers["X-RateLimit-Remaining"] == "0"


async def test_completion_is_capped_by_the_plan(app: FastAPI, user: User) -> None:
    upstream = app.state.settings.openai_base_url
    assert upstream
    async with make_client(app) as client:
        response = await chat(client, auth_headers(app, user), max_tokens=5_000)
    assert response.status_code == 200, response.text
    records = await ledger(app)
    assert records[-1].status == "ok"
    start, _ = calendar_month(clock.now())
    state = await app.state.admission.store.state(user.id, start)
    assert state.used_tokens == records[-1].total_tokens


async def test_prompt_larger_than_the_plan_allows(app: FastAPI, user: User) -> None:
    long = [{"role": "user", "content": "fox " * 600}]
    async with make_client(app) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": long},
            headers=auth_headers(app, user),
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "prompt_too_large"
    assert response.json()["error"]["limit"] == 500


async def test_streamed_request_settles_to_its_usage(app: FastAPI, user: User) -> None:
    async with make_client(app) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": QUESTION, "stream": True, "max_tokens": 40},
            headers=auth_headers(app, user),
        )
        assert response.status_code == 200
        assert response.headers["X-Quota-Limit"] == "1000"
        assert "data: [DONE]" in response.text
    [record] = await ledger(app)
    assert record.streamed
    assert record.status == "ok"
    start, _ = calendar_month(clock.now())
    state = await app.state.admission.store.state(user.id, start)
    assert (state.used_tokens, state.reserved_tokens) == (record.total_tokens, 0)


async def test_the_sweeper_releases_a_crashed_processs_reservation(
    make_settings: Any, plans_file: Any
) -> None:
    settings = make_settings(
        plans_file=plans_file, quota_backend="database", quota_sweep_interval_seconds=0.05
    )
    async with RunningApp(create_app(settings)) as app:
        async with app.state.sessionmaker() as session:
            victim = await create_user(session)
        now = clock.now()
        start, end = calendar_month(now)
        store = app.state.admission.store
        orphan = Reservation(
            id=uuid.uuid4(),
            user_id=victim.id,
            period_start=start,
            period_end=end,
            tokens=900,
            cost_nanos=0,
            token_limit=1000,
            cost_limit_nanos=None,
            requests_per_minute=10**6,
            tokens_per_minute=None,
            now=now,
            expires_at=now + timedelta(seconds=settings.quota_reservation_ttl_seconds),
        )
        assert (await store.reserve(orphan)).refused is None  # ...and its process dies here
        with clock.shifted(timedelta(seconds=settings.quota_reservation_ttl_seconds + 1)):
            for _ in range(100):
                if (await store.state(victim.id, start)).reserved_tokens == 0:
                    break
                await asyncio.sleep(0.05)
        assert (await store.state(victim.id, start)).reserved_tokens == 0


async def test_failed_upstream_call_releases_its_reservation(
    app: FastAPI, user: User, quota_upstream: Any
) -> None:
    from tests.fake_upstream import Fault

    quota_upstream.script(Fault.error(400))  # not retried: the call fails at once
    async with make_client(app) as client:
        response = await chat(client, auth_headers(app, user), max_tokens=50)
    assert response.status_code >= 400
    [record] = await ledger(app)
    assert record.status == "error"
    start, _ = calendar_month(clock.now())
    state = await app.state.admission.store.state(user.id, start)
    assert state.reserved_tokens == 0
    assert state.used_tokens == record.total_tokens


async def test_a_refused_requests_record_is_committed_before_the_response(
    make_settings: Any, settings: Any, database_url: str
) -> None:
    # The longest linger: right after one commit, the writer waits 0.1 s for more records.
    lingering = make_settings(**{**settings.model_dump(), "ledger_flush_interval_seconds": 0.1})
    async with RunningApp(create_app(lingering)) as app:
        async with app.state.sessionmaker() as session:
            user = await create_user(session)
        await use_tokens(app, user, 990)  # the plan's 1000 tokens are nearly gone
        engine = create_engine(database_url)
        try:
            async with make_client(app) as client, engine.connect() as conn:
                for _ in range(3):
                    response = await chat(client, auth_headers(app, user), max_tokens=50)
                    assert response.status_code == 429
                    # Read at once, through a connection of its own: no flush, no waiting.
                    status = await conn.scalar(
                        select(UsageRecord.status).where(
                            UsageRecord.request_id == response.headers["x-request-id"]
                        )
                    )
                    assert status == "rejected"
        finally:
            await engine.dispose()
