"""Settlements under faults: retried until they land, and never counted twice.

Faults are real: a proxy at the network boundary refuses connections or drops replies
(``tests.faults``), and SQLite's write lock is held by another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from kiban.billing.plans import PlanCatalog
from kiban.core import clock
from kiban.core.db import create_engine
from kiban.core.metrics import REGISTRY
from kiban.gateway.admission import Usage
from kiban.models import QuotaSettlement, User
from kiban.quota import QuotaAdmission
from kiban.quota.store import SETTLEMENT_RETENTION, QuotaStore, RedisQuotaStore, SqlQuotaStore
from tests.faults import FaultyProxy
from tests.quota.conftest import MakeReservation
from tests.quota.test_quota_admission import ask


def retries(outcome: str) -> float:
    return REGISTRY.get_sample_value("kiban_quota_settle_retries_total", {"outcome": outcome}) or 0


async def test_a_settle_counts_once_however_often_it_is_retried(
    store: QuotaStore, reservation_for: MakeReservation
) -> None:
    on_time = reservation_for(300)
    taken = await store.reserve(on_time)
    assert await store.settle(on_time, taken.handle, used_tokens=120, used_cost_nanos=0) == (
        "settled"
    )
    # The same settle again (a retry whose first attempt had landed): nothing changes.
    again = await store.settle(on_time, taken.handle, used_tokens=120, used_cost_nanos=0)
    assert again == "duplicate"
    # A late one (its reservation expired and was released) counts once too.
    late = reservation_for(200)
    held = await store.reserve(late)
    with clock.shifted(timedelta(seconds=61)):
        # The expiry releases it: the sweeper (database) or the next reservation (Redis).
        await store.release_expired(clock.now())
        await store.reserve(reservation_for(1))
        assert await store.settle(late, held.handle, used_tokens=50, used_cost_nanos=0) == "late"
        assert await store.settle(late, held.handle, used_tokens=50, used_cost_nanos=0) == (
            "duplicate"
        )
        state = await store.state(on_time.user_id, on_time.period_start)
    assert (state.used_tokens, state.reserved_tokens) == (120 + 50, 1)


async def test_settled_ids_are_forgotten_after_a_day(
    store: QuotaStore, reservation_for: MakeReservation, database_url: str
) -> None:
    reservation = reservation_for(10)
    taken = await store.reserve(reservation)
    await store.settle(reservation, taken.handle, used_tokens=10, used_cost_nanos=0)
    if isinstance(store, RedisQuotaStore):
        await store.drain()  # its settlement reaches the database through the settle stream
    engine = create_engine(database_url)
    try:
        count = select(func.count()).select_from(QuotaSettlement)
        async with engine.connect() as conn:
            assert await conn.scalar(count) == 1
        await store.release_expired(clock.now() + SETTLEMENT_RETENTION / 2)
        async with engine.connect() as conn:
            assert await conn.scalar(count) == 1
        await store.release_expired(clock.now() + SETTLEMENT_RETENTION + timedelta(seconds=1))
        async with engine.connect() as conn:
            assert await conn.scalar(count) == 0
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def redis_store_behind_proxy(
    redis_url: str, database_url: str
) -> AsyncIterator[tuple[FaultyProxy, RedisQuotaStore]]:
    """A Redis quota store that reaches Redis through a FaultyProxy (both closed on exit)."""
    url = make_url(redis_url)
    async with FaultyProxy(url.host or "127.0.0.1", url.port or 6379) as proxy:
        redis = Redis.from_url(
            f"redis://127.0.0.1:{proxy.port}/{url.database or 0}", decode_responses=True
        )
        stream = f"kiban:test-settlements:{uuid.uuid4().hex}"
        store = RedisQuotaStore(redis, SqlQuotaStore.from_url(database_url), stream=stream)
        try:
            yield proxy, store
        finally:
            await store.close()
            cleanup = Redis.from_url(redis_url)
            await cleanup.delete(stream)
            await cleanup.aclose()


@pytest.mark.redis
async def test_a_lost_redis_reply_is_retried_without_counting_twice(
    redis_url: str, database_url: str, reservation_for: MakeReservation
) -> None:
    async with redis_store_behind_proxy(redis_url, database_url) as (proxy, store):
        warm = reservation_for(10)  # loads the scripts into Redis
        await store.settle(
            warm, (await store.reserve(warm)).handle, used_tokens=10, used_cost_nanos=0
        )
        reservation = reservation_for(300)
        taken = await store.reserve(reservation)
        # Redis runs the settle script, but its reply is lost: the client sees an error.
        proxy.mode = "drop_replies"
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the client raises
            await store.settle(reservation, taken.handle, used_tokens=70, used_cost_nanos=0)
        proxy.mode = "pass"
        # The retry finds the settlement done in Redis (its stream entry written with it).
        retried = await store.settle(reservation, taken.handle, used_tokens=70, used_cost_nanos=0)
        assert retried == "duplicate"
        state = await store.state(reservation.user_id, reservation.period_start)
        assert (state.used_tokens, state.reserved_tokens) == (80, 0)
    sql = SqlQuotaStore.from_url(database_url)
    try:
        durable = await sql.state(reservation.user_id, reservation.period_start)
    finally:
        await sql.close()
    assert durable.used_tokens == 80


async def _faulty_admission(
    database_url: str, catalog: PlanCatalog, proxy: FaultyProxy | None
) -> QuotaAdmission:
    """The admission on the database store, reached through the proxy (PostgreSQL) or with a
    short lock timeout (SQLite, where the fault is another connection's write lock)."""
    url = make_url(database_url)
    if proxy is not None:
        url = url.set(host="127.0.0.1", port=proxy.port)
        store = SqlQuotaStore.from_url(url.render_as_string(hide_password=False))
    else:
        engine = create_async_engine(
            url,
            isolation_level="AUTOCOMMIT",
            connect_args={"timeout": 0.05},
            pool_reset_on_return=None,
        )
        store = SqlQuotaStore(engine)
    admission = QuotaAdmission(
        store, catalog, store.read_sessions, settle_wait=timedelta(seconds=0.2)
    )
    admission.settle_backoff = 0.05
    return admission


@pytest.mark.parametrize("fault", ["refused", "lost reply"])
async def test_admission_retries_a_settle_the_database_did_not_take(
    database_url: str, catalog: PlanCatalog, quota_user: User, fault: str
) -> None:
    postgres = database_url.startswith("postgresql")
    if fault == "lost reply" and not postgres:
        pytest.skip("SQLite has no network reply to lose")
    url = make_url(database_url)
    proxy = FaultyProxy(url.host or "127.0.0.1", url.port or 5432)
    async with proxy:
        admission = await _faulty_admission(database_url, catalog, proxy if postgres else None)
        recovered = retries("recovered")
        lock: sqlite3.Connection | None = None
        try:
            ticket = await admission.admit(ask(quota_user, model="extractive"))
            if postgres and fault == "refused":  # the server goes away
                proxy.mode = "refuse"
                proxy.cut()
            elif postgres:  # the settle reaches the server, its reply never comes back
                proxy.mode = "drop_replies"
            else:  # another connection holds SQLite's write lock
                lock = sqlite3.connect(url.database or "", isolation_level=None)
                lock.execute("BEGIN EXCLUSIVE")
            # The request is held up no longer than settle_wait: settle returns, and retries
            # in the background.
            await asyncio.wait_for(admission.settle(ticket, Usage(40, 10, None)), 5)
            assert len(admission._retries) == 1
            await asyncio.sleep(0.2)
            proxy.mode = "pass"
            if lock is not None:
                lock.execute("ROLLBACK")
            await asyncio.wait_for(asyncio.gather(*admission._retries), 10)
            assert retries("recovered") == recovered + 1
            period = ticket.state.reservation.period_start
            state = await admission.store.state(quota_user.id, period)
            assert (state.used_tokens, state.reserved_tokens) == (50, 0)
        finally:
            if lock is not None:
                lock.close()
            await admission.aclose(grace=1)
            await admission.store.close()


@pytest.mark.redis
async def test_a_settle_that_never_lands_is_abandoned_and_logged(
    redis_url: str, database_url: str, catalog: PlanCatalog, quota_user: User
) -> None:
    async with redis_store_behind_proxy(redis_url, database_url) as (proxy, store):
        admission = QuotaAdmission(
            store, catalog, store.read_sessions, settle_retry=timedelta(seconds=0.3)
        )
        admission.settle_backoff = 0.05
        abandoned = retries("abandoned")
        ticket = await admission.admit(ask(quota_user, model="extractive"))
        proxy.mode = "refuse"
        proxy.cut()
        await admission.settle(ticket, Usage(5, 5, None))
        await asyncio.wait_for(asyncio.gather(*admission._retries), 5)
        assert retries("abandoned") == abandoned + 1
        await admission.aclose(grace=1)


async def test_a_settle_whose_retry_lands_soon_returns_after_it_landed(
    database_url: str, catalog: PlanCatalog, quota_user: User
) -> None:
    if database_url.startswith("postgresql"):
        pytest.skip("the fault is SQLite's write lock, held by another connection")
    admission = await _faulty_admission(database_url, catalog, None)
    admission.settle_wait = timedelta(seconds=10)
    lock = sqlite3.connect(make_url(database_url).database or "", isolation_level=None)
    try:
        ticket = await admission.admit(ask(quota_user, model="extractive"))
        lock.execute("BEGIN EXCLUSIVE")
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, lock.execute, "ROLLBACK")  # the blip ends
        await asyncio.wait_for(admission.settle(ticket, Usage(40, 10, None)), 15)
        # Returned after the retry landed: nothing is left in memory only.
        assert not admission._retries
        period = ticket.state.reservation.period_start
        state = await admission.store.state(quota_user.id, period)
        assert (state.used_tokens, state.reserved_tokens) == (50, 0)
    finally:
        lock.close()
        await admission.aclose(grace=1)
        await admission.store.close()
