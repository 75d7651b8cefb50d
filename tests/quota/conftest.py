"""Quota fixtures: a small test plan catalog, real quota stores (SQLite, PostgreSQL, Redis)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from kiban.billing.entitlements import calendar_month
from kiban.billing.plans import PlanCatalog, parse_plans
from kiban.core import clock
from kiban.core.db import create_engine, create_sessionmaker
from kiban.models import User
from kiban.quota.store import QuotaStore, RedisQuotaStore, Reservation, SqlQuotaStore
from kiban.settings import Settings
from tests.fake_upstream import FakeUpstream

TEST_PLANS = """
default_plan = "free"

[plans.free]
monthly_tokens = 1_000
requests_per_minute = 1_000
models = ["extractive", "gpt-4o*"]
max_tokens = 50
max_prompt_tokens = 500
[plans.free.documents]
max_documents = 1
max_document_bytes = 1000
max_total_bytes = 1000

[plans.pro]
monthly_tokens = 1_000_000
monthly_cost_usd = 2.5
requests_per_minute = 5
tokens_per_minute = 20_000
models = ["*"]
max_tokens = 4_000
max_prompt_tokens = 16_000
stripe_price_ids = ["price_pro_monthly"]
[plans.pro.documents]
max_documents = 10
max_document_bytes = 10000
max_total_bytes = 100000
"""


@pytest.fixture
def catalog() -> PlanCatalog:
    return parse_plans(TEST_PLANS, source="test")


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(TEST_PLANS)
    return path


async def insert_user(database_url: str, **fields: Any) -> User:
    """A committed user (the quota tables reference users)."""
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            user = User(email=f"q-{uuid.uuid4().hex[:10]}@example.com", password_hash="x", **fields)
            session.add(user)
            await session.commit()
            return user
    finally:
        await engine.dispose()


@pytest.fixture
def settle_stream(redis_url: str) -> Iterator[str]:
    """A settle stream of this test's own (every test has its own database to drain into),
    deleted afterwards."""
    name = f"kiban:test-settlements:{uuid.uuid4().hex}"
    yield name
    client = SyncRedis.from_url(redis_url)
    try:
        client.delete(name)
    finally:
        client.close()


@pytest.fixture(params=["db", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[QuotaStore]:
    """A quota store on each database, and in Redis (durable copy in the database)."""
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_url")
        stream = request.getfixturevalue("settle_stream")
        redis_store = RedisQuotaStore.from_urls(redis_url, database_url, stream=stream)
        yield redis_store
        await redis_store.close()
        return
    sql_store = SqlQuotaStore.from_url(database_url)
    yield sql_store
    await sql_store.close()


@pytest.fixture
async def quota_user(database_url: str) -> User:
    return await insert_user(database_url)


MakeReservation = Callable[..., Reservation]


@pytest.fixture
def reservation_for(quota_user: User) -> MakeReservation:
    """Reservations for ``quota_user`` in the current month; keyword arguments override."""

    def make(tokens: int, **overrides: Any) -> Reservation:
        now: datetime = overrides.pop("now", None) or clock.now()
        start, end = calendar_month(now)
        values: dict[str, Any] = {
            "id": uuid.uuid4(),
            "user_id": quota_user.id,
            "period_start": start,
            "period_end": end,
            "tokens": tokens,
            "cost_nanos": 0,
            "token_limit": 1_000,
            "cost_limit_nanos": None,
            "requests_per_minute": 10_000,
            "tokens_per_minute": None,
            "now": now,
            "expires_at": now + timedelta(seconds=60),
        }
        values.update(overrides)
        return Reservation(**values)

    return make


# --- the real app, with the fake upstream and the test plans -----------------------------------


@pytest.fixture(scope="session")
def quota_upstream() -> Iterator[FakeUpstream]:
    """An OpenAI-compatible fake server on loopback (real HTTP), shared by the quota tests."""
    server = FakeUpstream(keep_requests=False).start()
    yield server
    server.stop()


@pytest.fixture(params=["db", pytest.param("redis", marks=pytest.mark.redis)])
def quota_backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for each quota backend: the database's row, or Redis."""
    if request.param == "redis":
        return {
            "redis_url": request.getfixturevalue("redis_url"),
            "quota_backend": "redis",
            "quota_settle_stream": request.getfixturevalue("settle_stream"),
        }
    return {"quota_backend": "database"}


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings],
    quota_upstream: FakeUpstream,
    plans_file: Path,
    quota_backend: dict[str, Any],
) -> Settings:
    quota_upstream.reset()
    return make_settings(
        openai_api_key="sk-test-upstream",
        openai_base_url=quota_upstream.base_url,
        plans_file=plans_file,
        ledger_flush_interval_seconds=0.01,
        **quota_backend,
    )
