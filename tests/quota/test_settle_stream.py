"""The Redis store's settle stream: one entry per settlement, drained into the database once.

Real Redis (database 3 in the suite's setup) and each real database; every test has a stream of
its own. A drainer that "dies" is one whose steps the test stops half way: it wrote the batch
without acknowledging it, or read it without writing it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import delete, func, select

from kiban.core.db import create_engine
from kiban.core.metrics import QUOTA_STREAM_DRAINED
from kiban.models import QuotaPeriod, UsageRecord, UsageRollupHourly, User
from kiban.quota.store import RedisQuotaStore, Reservation, SqlQuotaStore
from kiban.quota.store.redis_drain import StreamDrainer
from tests.factories import ledger_record
from tests.quota.conftest import MakeReservation

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis_store(
    redis_url: str, database_url: str, settle_stream: str
) -> AsyncIterator[RedisQuotaStore]:
    store = RedisQuotaStore.from_urls(redis_url, database_url, stream=settle_stream)
    yield store
    await store.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def _settle(
    store: RedisQuotaStore, reservation: Reservation, used: int, cost: int = 0
) -> dict[str, Any]:
    taken = await store.reserve(reservation)
    assert taken.refused is None
    record = ledger_record(
        reservation.user_id,
        total_tokens=used,
        prompt_tokens=used,
        completion_tokens=0,
        estimated_cost=Decimal("0.0000123400"),
    )
    await store.settle(
        reservation, taken.handle, used_tokens=used, used_cost_nanos=cost, record=record
    )
    return record


async def _database(database_url: str, user_id: uuid.UUID) -> tuple[int, int, int, int]:
    """Ledger rows, the ledger's tokens, the durable ``used``, and the rollup's requests."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            mine = UsageRecord.user_id == user_id
            rows = await conn.scalar(select(func.count()).where(mine))
            tokens = await conn.scalar(select(func.sum(UsageRecord.total_tokens)).where(mine))
            used = await conn.scalar(
                select(func.sum(QuotaPeriod.used_tokens)).where(QuotaPeriod.user_id == user_id)
            )
            rollup = await conn.scalar(select(func.sum(UsageRollupHourly.requests)))
    finally:
        await engine.dispose()
    return int(rows or 0), int(tokens or 0), int(used or 0), int(rollup or 0)


async def test_a_settle_appends_exactly_one_entry_and_the_drain_writes_it(
    redis_store: RedisQuotaStore,
    redis: Redis,
    database_url: str,
    reservation_for: MakeReservation,
) -> None:
    reservation = reservation_for(100)
    record = await _settle(redis_store, reservation, 70, cost=9)
    entries = await redis.xrange(redis_store.stream)
    assert len(entries) == 1
    fields = entries[0][1]
    assert (fields["r"], fields["u"], fields["t"], fields["c"]) == (
        reservation.id.hex,
        str(reservation.user_id),
        "70",
        "9",
    )
    # A retried settle (a lost reply) appends nothing.
    again = await redis_store.settle(reservation, None, used_tokens=70, used_cost_nanos=9)
    assert again == "duplicate"
    assert await redis.xlen(redis_store.stream) == 1
    # Nothing in the database before the drain: the response waited for Redis only.
    assert (await _database(database_url, reservation.user_id))[:3] == (0, 0, 0)

    assert await redis_store.drain() == 1
    assert await redis.xlen(redis_store.stream) == 0
    assert await _database(database_url, reservation.user_id) == (1, 70, 70, 1)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(select(UsageRecord))).one()
    finally:
        await engine.dispose()
    assert row.request_id == record["request_id"]
    assert row.estimated_cost == Decimal("0.0000123400")
    assert row.created_at == record["created_at"]


async def test_a_duplicated_entry_drains_once(
    redis_store: RedisQuotaStore,
    redis: Redis,
    database_url: str,
    reservation_for: MakeReservation,
) -> None:
    reservation = reservation_for(100)
    await _settle(redis_store, reservation, 40)
    [(_, fields)] = await redis.xrange(redis_store.stream)
    await redis_store.drain()
    # The same settlement arrives again (delivered twice, copied by hand): it changes nothing.
    await redis.xadd(redis_store.stream, fields)
    await redis.xadd(redis_store.stream, fields)
    assert await redis_store.drain() == 2
    assert await redis.xlen(redis_store.stream) == 0
    assert await _database(database_url, reservation.user_id) == (1, 40, 40, 1)


async def test_a_drainer_killed_after_its_commit_is_redrained_without_double_counting(
    redis_store: RedisQuotaStore,
    redis: Redis,
    redis_url: str,
    database_url: str,
    reservation_for: MakeReservation,
) -> None:
    for tokens in (10, 20, 30):
        await _settle(redis_store, reservation_for(100), tokens)
    user_id = reservation_for(1).user_id
    sql = SqlQuotaStore.from_url(database_url)
    try:
        dead = StreamDrainer(redis, sql, redis_store.stream, consumer="dead")
        batch = await dead.read()
        assert len(batch) == 3
        await dead.write(batch)  # committed; the process dies before its XACK
    finally:
        await sql.close()
    assert await _database(database_url, user_id) == (3, 60, 60, 3)
    assert await redis.xlen(redis_store.stream) == 3
    # A live process takes the dead one's pending entries over and drains them again.
    redis_store.drainer.claim_idle_ms = 0
    assert await redis_store.drainer.drain(claim=True) == 3
    assert await redis.xlen(redis_store.stream) == 0
    assert await _database(database_url, user_id) == (3, 60, 60, 3)


async def test_a_drainer_killed_before_its_commit_leaves_the_entries_to_another(
    redis_store: RedisQuotaStore,
    redis: Redis,
    database_url: str,
    reservation_for: MakeReservation,
) -> None:
    await _settle(redis_store, reservation_for(100), 25)
    sql = SqlQuotaStore.from_url(database_url)
    try:
        dead = StreamDrainer(redis, sql, redis_store.stream, consumer="dead")
        assert len(await dead.read()) == 1  # read, then killed: nothing written
    finally:
        await sql.close()
    # New entries are not delivered twice: the other consumer finds nothing new ...
    assert await redis_store.drainer.drain() == 0
    # ... until the dead one's entry has been pending long enough to be claimed.
    redis_store.drainer.claim_idle_ms = 0
    assert await redis_store.drainer.drain(claim=True) == 1
    assert await _database(database_url, reservation_for(1).user_id) == (1, 25, 25, 1)


async def _lose_redis_keys(redis: Redis, user_id: uuid.UUID) -> None:
    """The user's quota keys vanish (an eviction; the stream itself survives)."""
    keys = [k async for k in redis.scan_iter(match=f"kiban:quota:{{{user_id}}}*")]
    assert keys
    await redis.delete(*keys)


async def test_a_reseed_counts_undrained_entries_once(
    redis_store: RedisQuotaStore,
    redis: Redis,
    database_url: str,
    reservation_for: MakeReservation,
) -> None:
    await _settle(redis_store, reservation_for(300), 250)
    await _lose_redis_keys(redis, reservation_for(1).user_id)
    # The database copy has nothing yet; the stream has the settlement: the seed counts it.
    again = await redis_store.reserve(reservation_for(10))
    assert again.state.used_tokens == 250
    await redis_store.drain()
    # Drained: the database has it, the stream does not; a second loss seeds 250 again, not 500.
    await _lose_redis_keys(redis, reservation_for(1).user_id)
    assert (await redis_store.reserve(reservation_for(10))).state.used_tokens == 250


async def test_a_reseed_counts_an_entry_committed_but_not_acknowledged_once(
    redis_store: RedisQuotaStore,
    redis: Redis,
    database_url: str,
    reservation_for: MakeReservation,
) -> None:
    await _settle(redis_store, reservation_for(300), 250)
    drainer = redis_store.drainer
    await drainer.write(await drainer.read())  # in the database AND still in the stream
    await _lose_redis_keys(redis, reservation_for(1).user_id)
    assert (await redis_store.reserve(reservation_for(10))).state.used_tokens == 250


async def test_a_reseed_starts_again_when_a_settle_found_the_key_missing(
    redis_store: RedisQuotaStore,
    redis: Redis,
    reservation_for: MakeReservation,
) -> None:
    in_flight = reservation_for(100)
    assert (await redis_store.reserve(in_flight)).refused is None
    user_id = in_flight.user_id
    await _lose_redis_keys(redis, user_id)
    quota = f"kiban:quota:{{{user_id}}}:{int(in_flight.period_start.timestamp())}"
    before = await redis.get(quota + ":unseeded") or "0"
    # A settle lands while the key is missing (after a seed began its reads) ...
    await redis_store.settle(in_flight, None, used_tokens=60, used_cost_nanos=0)
    # ... so a seed computed from what it read before must not be written.
    seeded = await redis_store._seed(
        keys=[quota, quota + ":held", quota + ":unseeded"], args=[0, 0, 0, 60, before]
    )
    assert seeded == 0
    assert not await redis.exists(quota)
    # The next reserve seeds again and counts the settle (from the stream).
    assert (await redis_store.reserve(reservation_for(10))).state.used_tokens == 60


async def test_a_deleted_users_record_is_drained_without_a_user(
    redis_store: RedisQuotaStore,
    database_url: str,
    reservation_for: MakeReservation,
) -> None:
    for tokens in (10, 20):
        await _settle(redis_store, reservation_for(100), tokens)
    user_id = reservation_for(1).user_id
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:  # deleted between the answers and the drain
            await conn.execute(delete(User).where(User.id == user_id))
        dropped = QUOTA_STREAM_DRAINED.labels("dropped")._value.get()
        assert await redis_store.drain() == 2
        assert QUOTA_STREAM_DRAINED.labels("dropped")._value.get() == dropped
        async with engine.connect() as conn:
            rows = (await conn.execute(select(UsageRecord.user_id, UsageRecord.total_tokens))).all()
    finally:
        await engine.dispose()
    assert sorted(rows, key=lambda r: r.total_tokens) == [(None, 10), (None, 20)]
