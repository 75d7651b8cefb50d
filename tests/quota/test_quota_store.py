"""The quota stores: atomic reservations under concurrency, settlement, expiry, rate windows."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from kiban.core import clock
from kiban.quota import build_store
from kiban.quota.store import QuotaStore, RedisQuotaStore, SqlQuotaStore
from kiban.settings import ConfigurationError
from tests.quota.conftest import MakeReservation


async def test_concurrent_reservations_never_exceed_the_limit(
    store: QuotaStore, reservation_for: MakeReservation
) -> None:
    reservations = [reservation_for(30, token_limit=500) for _ in range(60)]
    outcomes = await asyncio.gather(*(store.reserve(r) for r in reservations))
    taken = [(r, o) for r, o in zip(reservations, outcomes, strict=True) if o.refused is None]
    assert len(taken) == 500 // 30  # 16 fit; the other 44 are refused
    assert all(o.refused == "quota" for o in outcomes if o.refused is not None)
    state = await store.state(reservations[0].user_id, reservations[0].period_start)
    assert state.reserved_tokens == 16 * 30
    assert state.used_tokens == 0

    actual = [random.randint(0, 30) for _ in taken]
    await asyncio.gather(
        *(
            store.settle(r, o.handle, used_tokens=a, used_cost_nanos=0)
            for (r, o), a in zip(taken, actual, strict=True)
        )
    )
    state = await store.state(reservations[0].user_id, reservations[0].period_start)
    assert state.reserved_tokens == 0
    assert state.used_tokens == sum(actual) <= 500


async def test_settle_replaces_the_reservation_and_frees_the_rest(
    store: QuotaStore, reservation_for: MakeReservation
) -> None:
    first = reservation_for(800)
    taken = await store.reserve(first)
    assert taken.refused is None
    assert (await store.reserve(reservation_for(300))).refused == "quota"
    settled = await store.settle(first, taken.handle, used_tokens=100, used_cost_nanos=0)
    assert settled == "settled"
    again = await store.reserve(reservation_for(300))
    assert again.refused is None
    assert again.state.used_tokens == 100
    assert again.state.reserved_tokens == 300


async def test_crashed_reservation_expires_and_is_released(
    store: QuotaStore, reservation_for: MakeReservation
) -> None:
    # A process reserves 900 of 1000 tokens and dies before settling.
    orphan = reservation_for(900)
    orphaned = await store.reserve(orphan)
    assert orphaned.refused is None
    assert (await store.reserve(reservation_for(200))).refused == "quota"
    with clock.shifted(timedelta(seconds=61)):  # past the orphan's expiry
        later = await store.reserve(reservation_for(200))
        assert later.refused is None
        assert later.state.reserved_tokens == 200
    # The dead process's settle, should it ever arrive, still records what was used.
    late = await store.settle(orphan, orphaned.handle, used_tokens=5, used_cost_nanos=0)
    assert late == "late"
    state = await store.state(orphan.user_id, orphan.period_start)
    assert (state.used_tokens, state.reserved_tokens) == (5, 200)


async def test_sweeper_releases_expired_reservations(
    database_url: str, reservation_for: MakeReservation
) -> None:
    store = SqlQuotaStore.from_url(database_url)
    try:
        orphans = [reservation_for(100) for _ in range(3)]
        for orphan in orphans:
            assert (await store.reserve(orphan)).refused is None
        assert await store.release_expired(clock.now()) == 0
        assert await store.release_expired(clock.now() + timedelta(seconds=61)) == 3
        state = await store.state(orphans[0].user_id, orphans[0].period_start)
        assert state.reserved_tokens == 0
    finally:
        await store.close()


async def test_requests_per_minute_window(
    store: QuotaStore, reservation_for: MakeReservation
) -> None:
    start = clock.now().replace(second=5, microsecond=0)
    with clock.frozen(start):
        results = [
            (await store.reserve(reservation_for(1, requests_per_minute=3))).refused
            for _ in range(4)
        ]
    assert results == [None, None, None, "rate_requests"]
    with clock.frozen(start + timedelta(seconds=60)):
        assert (await store.reserve(reservation_for(1, requests_per_minute=3))).refused is None


async def test_tokens_per_minute_counts_reservations_and_gives_back_unused(
    store: QuotaStore, reservation_for: MakeReservation
) -> None:
    with clock.frozen(clock.now().replace(second=1, microsecond=0)):
        big = reservation_for(80, tokens_per_minute=100)
        taken = await store.reserve(big)
        assert taken.refused is None
        assert (await store.reserve(reservation_for(30, tokens_per_minute=100))).refused == (
            "rate_tokens"
        )
        await store.settle(big, taken.handle, used_tokens=20, used_cost_nanos=0)
        assert (await store.reserve(reservation_for(30, tokens_per_minute=100))).refused is None


async def test_cost_budget_is_reserved_atomically(
    store: QuotaStore, reservation_for: MakeReservation
) -> None:
    budget = 1_000_000  # nano-USD
    reservations = [
        reservation_for(1, cost_nanos=300_000, cost_limit_nanos=budget) for _ in range(10)
    ]
    outcomes = await asyncio.gather(*(store.reserve(r) for r in reservations))
    assert sum(o.refused is None for o in outcomes) == 3
    assert {o.refused for o in outcomes} == {None, "cost"}


async def test_extra_tokens_raise_the_limit_for_the_period(
    store: QuotaStore, reservation_for: MakeReservation
) -> None:
    probe = reservation_for(1_200)
    assert (await store.reserve(probe)).refused == "quota"
    await store.set_extra_tokens(probe.user_id, probe.period_start, probe.period_end, 500)
    taken = await store.reserve(reservation_for(1_200))
    assert taken.refused is None
    assert taken.state.extra_tokens == 500
    # Replacing the grant, not adding to it.
    await store.set_extra_tokens(probe.user_id, probe.period_start, probe.period_end, 100)
    assert (await store.state(probe.user_id, probe.period_start)).extra_tokens == 100


async def test_periods_are_separate(store: QuotaStore, reservation_for: MakeReservation) -> None:
    now = clock.now()
    this_month = reservation_for(1_000, now=now)
    assert (await store.reserve(this_month)).refused is None
    next_month = reservation_for(1_000, now=this_month.period_end + timedelta(hours=1))
    assert (await store.reserve(next_month)).refused is None


@pytest.mark.redis
async def test_redis_restart_reseeds_from_the_durable_copy(
    database_url: str, redis_url: str, settle_stream: str, reservation_for: MakeReservation
) -> None:
    store = RedisQuotaStore.from_urls(redis_url, database_url, stream=settle_stream)
    try:
        first = reservation_for(300)
        taken = await store.reserve(first)
        await store.settle(first, taken.handle, used_tokens=250, used_cost_nanos=7)
        await store.drain()  # the settle stream into the database: the durable copy has it
        await store.set_extra_tokens(first.user_id, first.period_start, first.period_end, 40)
        in_flight = reservation_for(100)
        assert (await store.reserve(in_flight)).refused is None
        # Redis loses everything (a restart without persistence).
        redis = Redis.from_url(redis_url)
        keys = [k async for k in redis.scan_iter(match=f"kiban:*{{{first.user_id}}}*")]
        assert keys
        await redis.delete(*keys)
        await redis.aclose()
        state = await store.state(first.user_id, first.period_start)
        assert (state.used_tokens, state.extra_tokens, state.used_cost_nanos) == (250, 40, 7)
        # The next reservation seeds the key from the database: nothing used is forgotten.
        again = await store.reserve(reservation_for(790))
        assert again.refused is None
        assert (again.state.used_tokens, again.state.reserved_tokens) == (250, 790)
        assert (await store.reserve(reservation_for(1))).refused == "quota"  # 250+790 = 1040
        # The in-flight request's settle still records its usage (its reservation is gone).
        late = await store.settle(in_flight, None, used_tokens=60, used_cost_nanos=0)
        assert late == "late"
        assert (await store.state(first.user_id, first.period_start)).used_tokens == 310
    finally:
        await store.close()


def test_redis_backend_needs_a_redis_url(make_settings: Any) -> None:
    with pytest.raises(ConfigurationError, match="KIBAN_REDIS_URL"):
        build_store(make_settings(quota_backend="redis", redis_url=None))
