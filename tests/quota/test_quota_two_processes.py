"""Two kiban processes (uvicorn, served ports) on one database (and Redis): limits are global.

On SQLite this is ``kiban serve --workers 2`` (two processes on one file); on PostgreSQL, two
instances behind a load balancer.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiban.auth.keys import load_keyring
from kiban.auth.verify import issue_access_token
from kiban.billing.entitlements import calendar_month
from kiban.core import clock
from kiban.quota import build_store
from kiban.quota.store import Reservation
from kiban.settings import Settings
from tests.conftest import TEST_SECRET
from tests.factories import ledger_count
from tests.quota.conftest import insert_user
from tests.served import Server

pytestmark = [pytest.mark.timeout(300)]
QUESTION = [{"role": "user", "content": "What does the fox do?"}]


@pytest.fixture
def two_servers(
    database_url: str,
    quota_backend: dict[str, Any],
    quota_upstream: Any,
    plans_file: Path,
    tmp_path: Path,
) -> Iterator[list[Server]]:
    env = {
        **os.environ,
        "KIBAN_ENV": "test",
        "KIBAN_DATABASE_URL": database_url,
        "KIBAN_SECRET_KEY": TEST_SECRET,
        "KIBAN_PLANS_FILE": str(plans_file),
        "KIBAN_QUOTA_BACKEND": quota_backend["quota_backend"],
        "KIBAN_LEDGER_FLUSH_INTERVAL_SECONDS": "0.01",
        "KIBAN_DEV_SECRET_FILE": str(tmp_path / ".kiban-secret"),
        "OPENAI_API_KEY": "sk-test-upstream",
        "OPENAI_BASE_URL": quota_upstream.base_url,
    }
    if "redis_url" in quota_backend:
        env["KIBAN_REDIS_URL"] = quota_backend["redis_url"]
        env["KIBAN_QUOTA_SETTLE_STREAM"] = quota_backend["quota_settle_stream"]
    else:
        env.pop("KIBAN_REDIS_URL", None)
    servers = [Server(env, tmp_path), Server(env, tmp_path)]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def token_for(settings: Settings, user_id: uuid.UUID) -> dict[str, str]:
    keyring, _ = load_keyring(settings)
    return {"Authorization": f"Bearer {issue_access_token(keyring, settings, user_id)}"}


async def fire(
    servers: list[Server], headers: dict[str, str], count: int, **body: Any
) -> list[tuple[int, httpx.Response]]:
    """``count`` concurrent chat completions, alternating between the servers."""
    clients = [httpx.AsyncClient(base_url=s.url, timeout=30) for s in servers]
    payload = {"model": "gpt-4o-mini", "messages": QUESTION, **body}
    try:

        async def one(i: int) -> tuple[int, httpx.Response]:
            which = i % len(clients)
            response = await clients[which].post(
                "/v1/chat/completions", json=payload, headers=headers
            )
            return which, response

        return await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        for client in clients:
            await client.aclose()


async def test_quota_and_rate_limits_are_global_across_processes(
    two_servers: list[Server], make_settings: Any, database_url: str, quota_backend: dict[str, Any]
) -> None:
    settings = make_settings(**quota_backend)
    await check_rate_limit(two_servers, settings, database_url)
    user = await insert_user(database_url)
    store = build_store(settings)
    now = clock.now()
    start, end = calendar_month(now)
    try:
        # 700 of the free plan's 1000 tokens are already used this month.
        spent = Reservation(
            id=uuid.uuid4(),
            user_id=user.id,
            period_start=start,
            period_end=end,
            tokens=700,
            cost_nanos=0,
            token_limit=1000,
            cost_limit_nanos=None,
            requests_per_minute=10**6,
            tokens_per_minute=None,
            now=now,
            expires_at=now + timedelta(minutes=1),
        )
        taken = await store.reserve(spent)
        await store.settle(spent, taken.handle, used_tokens=700, used_cost_nanos=0)

        results = await fire(two_servers, token_for(settings, user.id), 30, max_tokens=50)
        statuses = {(which, r.status_code) for which, r in results}
        assert {s for _, s in statuses} <= {200, 429}
        for which in (0, 1):
            assert (which, 429) in statuses  # each process refused some: the limit is shared
        assert all(
            r.json()["error"]["code"] == "quota_exceeded"
            for _, r in results
            if r.status_code == 429
        )
        state = await store.state(user.id, start)
        ok_tokens = sum(
            r.json()["usage"]["total_tokens"] for _, r in results if r.status_code == 200
        )
        assert state.used_tokens == 700 + ok_tokens
        assert state.used_tokens <= 1000
        assert state.reserved_tokens == 0
    finally:
        await store.close()
    for server in two_servers:
        server.stop()  # flushes each process's ledger
    assert await ledger_count(database_url, user.id) == 30  # one record per request


async def check_rate_limit(servers: list[Server], settings: Settings, database_url: str) -> None:
    """The pro plan's 5 requests a minute hold across both processes (not 5 each)."""
    user = await insert_user(database_url, plan="pro")
    if clock.now().second >= 45:  # keep the burst inside one rate window
        await asyncio.sleep(61 - clock.now().second)
    results = await fire(servers, token_for(settings, user.id), 12, max_tokens=10)
    codes = sorted(r.status_code for _, r in results)
    assert codes == [200] * 5 + [429] * 7  # per process it would have been 10 (5 each)
    for _, response in results:
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(response.headers["Retry-After"]) <= 60
