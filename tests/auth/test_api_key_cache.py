"""The API-key cache: a hit reads nothing, and every change that decides a key's outcome is seen
within the bound, whoever writes it (an endpoint, raw SQL, a cascade)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from kiban.auth.api_keys import create_api_key, wait_for_touches
from kiban.auth.key_cache import STALENESS_BOUND, ApiKeyCache, CachedKey
from kiban.core import clock
from kiban.core.db import create_engine
from kiban.models import ApiKeyLimit, AuthChange, AuthEpoch, BillingSubscription, Role, User
from tests.auth.conftest import assert_auth_error, bearer, new_api_key, within_the_bound
from tests.conftest import auth_headers, create_user

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every statement the engine sends while the block runs."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])  # (conn, cursor, statement, parameters, context, executemany)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def cached_key(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    """A new API key, used once so that the app's cache holds it."""
    created = await new_api_key(client, headers)
    assert (await client.get("/auth/me", headers=bearer(created["key"]))).status_code == 200
    return created


async def epoch(session: AsyncSession) -> int:
    value = await session.scalar(select(AuthEpoch.value).where(AuthEpoch.id == 1))
    await session.commit()  # end the read, so the next one sees later commits
    return int(value or 0)


def refused(client: httpx.AsyncClient, key: str, code: str) -> Any:
    async def check() -> bool:
        response = await client.get("/auth/me", headers=bearer(key))
        if response.status_code == 200:
            return False
        assert_auth_error(response, code)
        return True

    return check


async def test_a_cache_hit_makes_no_database_round_trip(
    app: FastAPI, client: httpx.AsyncClient, user: User, user_headers: dict[str, str]
) -> None:
    key = (await cached_key(client, user_headers))["key"]
    await wait_for_touches()  # the first use writes last_used_at, off the request path
    with statements(app.state.engine) as seen:
        for _ in range(3):
            response = await client.get("/auth/me", headers=bearer(key))
            assert response.status_code == 200
            assert response.json()["id"] == str(user.id)
        await wait_for_touches()
    assert seen == []
    assert len(app.state.api_key_cache) == 1


async def test_a_cache_miss_is_one_statement(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    key = (await new_api_key(client, user_headers))["key"]
    with statements(app.state.engine) as seen:
        assert (await client.get("/auth/me", headers=bearer(key))).status_code == 200
    assert len(seen) == 1  # the key, its user, the paid-access bound, its limits, the counter


async def test_a_revoked_key_is_refused_within_the_bound(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    created = await cached_key(client, user_headers)
    response = await client.delete(f"/auth/api-keys/{created['id']}", headers=user_headers)
    assert response.status_code == 204
    await within_the_bound(refused(client, created["key"], "invalid_api_key"))


async def test_a_deactivated_user_is_refused_within_the_bound(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: User,
    user_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    key = (await cached_key(client, user_headers))["key"]
    response = await client.patch(
        f"/admin/users/{user.id}", json={"is_active": False}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    await within_the_bound(refused(client, key, "user_inactive"))


async def test_a_demoted_admin_loses_admin_routes_within_the_bound(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, admin_headers: dict[str, str]
) -> None:
    other = await create_user(session, role=Role.ADMIN)
    key = (await cached_key(client, auth_headers(app, other)))["key"]
    assert (await client.get("/admin/users", headers=bearer(key))).status_code == 200
    response = await client.patch(
        f"/admin/users/{other.id}", json={"role": "user"}, headers=admin_headers
    )
    assert response.status_code == 200, response.text

    async def forbidden() -> bool:
        return (await client.get("/admin/users", headers=bearer(key))).status_code == 403

    await within_the_bound(forbidden)


async def test_a_plan_set_by_an_admin_reaches_the_cached_key_within_the_bound(
    client: httpx.AsyncClient,
    user: User,
    user_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    key = (await cached_key(client, user_headers))["key"]

    async def plan() -> str:
        response = await client.get("/me/usage", headers=bearer(key))
        assert response.status_code == 200, response.text
        return str(response.json()["plan"]["name"])

    assert await plan() == "free"
    response = await client.patch(
        f"/admin/users/{user.id}", json={"plan": "pro"}, headers=admin_headers
    )
    assert response.status_code == 200, response.text

    async def pro() -> bool:
        return await plan() == "pro"

    await within_the_bound(pro)


async def test_key_limits_set_after_the_key_is_cached_apply_within_the_bound(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    created = await cached_key(client, user_headers)
    headers = bearer(created["key"])
    response = await client.put(
        f"/me/api-keys/{created['id']}/limits",
        json={"requests_per_minute": 1, "tokens_per_minute": None},
        headers=user_headers,
    )
    assert response.status_code == 200, response.text

    async def limited() -> bool:
        response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        return response.headers.get("X-RateLimit-Key-Limit") == "1" or response.status_code == 429

    await within_the_bound(limited)


async def test_raw_sql_writes_reach_the_cache_within_the_bound(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str], session: AsyncSession
) -> None:
    # What no endpoint does, an operator (or a future bulk job) may: triggers see it all.
    revoked = await cached_key(client, user_headers)
    await session.execute(
        text("UPDATE api_keys SET revoked_at = :now WHERE lookup_id = :lookup_id"),
        {"now": clock.now(), "lookup_id": revoked["prefix"].removeprefix("kb_")},
    )
    await session.commit()
    await within_the_bound(refused(client, revoked["key"], "invalid_api_key"))

    deleted = await create_user(session)
    key = (await cached_key(client, auth_headers(app, deleted)))["key"]
    # A deleted user's keys go by the cascade; the user's row is what the trigger records.
    await session.execute(text("DELETE FROM users WHERE email = :email"), {"email": deleted.email})
    await session.commit()
    await within_the_bound(refused(client, key, "invalid_api_key"))


async def test_last_used_writes_do_not_move_the_counter(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str], session: AsyncSession
) -> None:
    created = await new_api_key(client, user_headers)
    before = await epoch(session)
    with clock.frozen(clock.now()):
        assert (await client.get("/auth/me", headers=bearer(created["key"]))).status_code == 200
        await wait_for_touches()
    assert await epoch(session) == before


async def test_a_cache_whose_database_cannot_be_reached_never_answers(tmp_path: Any) -> None:
    broken = create_engine(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/kiban.db")
    cache = ApiKeyCache(broken, max_size=10, poll_interval=0.25)
    try:
        assert await cache.poll() is False  # the database cannot be opened
        assert not cache.serving
        assert not cache.put("h", _entry(), 0)
    finally:
        await broken.dispose()


async def test_failing_polls_close_the_cache_at_the_bound(
    app: FastAPI, session: AsyncSession
) -> None:
    now = [100.0]
    cache = ApiKeyCache(app.state.engine, max_size=10, poll_interval=0.25, monotonic=lambda: now[0])
    try:
        assert await cache.poll()
        assert cache.epoch is not None
        entry = _entry()
        assert cache.put("h", entry, cache.epoch)
        # A real failure: the poll's statement cannot run while its table is away.
        await session.execute(text("ALTER TABLE auth_changes RENAME TO auth_changes_away"))
        await session.commit()
        try:
            now[0] += 0.5
            assert not await cache.poll()
            assert cache.get("h") is entry  # the last good poll started 0.5 s ago: still exact
            now[0] += 0.5
            assert cache.get("h") is None  # 1 s: the database must answer
        finally:
            await session.execute(text("ALTER TABLE auth_changes_away RENAME TO auth_changes"))
            await session.commit()
        assert await cache.poll()
        assert cache.get("h") is entry  # back: nothing changed meanwhile
    finally:
        await cache.aclose()


async def test_the_cache_answers_only_within_the_bound_of_its_last_poll(app: FastAPI) -> None:
    now = [100.0]
    engine = app.state.engine
    cache = ApiKeyCache(engine, max_size=10, poll_interval=0.25, monotonic=lambda: now[0])
    try:
        assert not cache.serving  # no poll yet
        assert await cache.poll()
        assert cache.epoch is not None
        entry = _entry()
        assert cache.put("h", entry, cache.epoch)
        now[0] += STALENESS_BOUND - 0.01
        assert cache.get("h") is entry
        now[0] += 0.01  # the bound since the last poll started: the database must answer
        assert cache.get("h") is None
        assert await cache.poll()
        assert cache.get("h") is entry  # nothing changed meanwhile: the entry is still exact
    finally:
        await cache.aclose()


async def test_a_stale_cache_waits_for_one_shared_poll(app: FastAPI) -> None:
    # Under a burst the loop may lag past the bound: the requests then share one fresh poll
    # instead of each reading its key from the database.
    now = [100.0]
    engine = app.state.engine
    cache = ApiKeyCache(engine, max_size=10, poll_interval=0.25, monotonic=lambda: now[0])
    try:
        assert await cache.poll()
        assert cache.epoch is not None
        entry = _entry()
        assert cache.put("h", entry, cache.epoch)
        now[0] += STALENESS_BOUND + 5
        assert not cache.serving
        with statements(engine) as seen:
            asked = cache.now()
            assert await asyncio.gather(*(cache.fresh(asked) for _ in range(50))) == [True] * 50
        assert len(seen) == 1  # one poll for fifty callers
        assert cache.get("h", asked) is entry
        now[0] += STALENESS_BOUND + 5  # the poll took long (a lagging loop): still after asked
        assert cache.get("h", asked) is entry
        assert cache.get("h") is None  # but a lookup asked now needs a newer poll
    finally:
        await cache.aclose()


async def test_a_read_older_than_the_last_poll_is_not_cached(
    app: FastAPI, session: AsyncSession, user: User
) -> None:
    cache = ApiKeyCache(app.state.engine, max_size=10, poll_interval=0.25)
    try:
        assert await cache.poll()
        read_at = await epoch(session)
        user.plan = "pro"  # a change after the read...
        await session.commit()
        assert await cache.poll()  # ...that the poller has handled
        assert cache.epoch is not None
        assert cache.epoch > read_at
        assert not cache.put("h", _entry(user.id), read_at)
        assert cache.put("h", _entry(user.id), cache.epoch)
    finally:
        await cache.aclose()


async def test_a_counter_that_goes_back_empties_the_cache(
    app: FastAPI, session: AsyncSession
) -> None:
    cache = ApiKeyCache(app.state.engine, max_size=10, poll_interval=0.25)
    try:
        assert await cache.poll()
        # (PostgreSQL's tests start from truncated tables: no counter row until a change.)
        await session.execute(text("DELETE FROM auth_epoch"))
        await session.execute(text("INSERT INTO auth_epoch (id, value) VALUES (1, 5)"))
        await session.commit()
        assert await cache.poll()
        assert cache.put("h", _entry(), await epoch(session))
        # A database restored from an older backup: its counter is behind what we have seen.
        await session.execute(text("DELETE FROM auth_epoch"))
        await session.commit()
        assert await cache.poll()
        assert len(cache) == 0
        assert cache.epoch == 0
    finally:
        await cache.aclose()


async def test_unknown_and_wrong_keys_are_never_cached(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    key = (await new_api_key(client, user_headers))["key"]
    for i in range(50):
        forged = key[:-4] + f"{i:04d}"
        assert_auth_error(await client.get("/auth/me", headers=bearer(forged)), "invalid_api_key")
        unknown = f"kb_{uuid.uuid4().hex[:12]}_{'a' * 43}"
        assert_auth_error(await client.get("/auth/me", headers=bearer(unknown)), "invalid_api_key")
    assert len(app.state.api_key_cache) == 0


async def test_the_cache_keeps_the_most_recently_used_keys(
    app: FastAPI, session: AsyncSession, user: User
) -> None:
    cache = ApiKeyCache(app.state.engine, max_size=2, poll_interval=0.25)
    try:
        assert await cache.poll()
        assert cache.epoch is not None
        for name in ("a", "b"):
            cache.put(name, _entry(user.id), cache.epoch)
        assert cache.get("a") is not None  # "b" is now the least recently used
        cache.put("c", _entry(user.id), cache.epoch)
        assert len(cache) == 2
        assert cache.get("b") is None
        assert cache.get("a") is not None
        assert cache.get("c") is not None
    finally:
        await cache.aclose()


async def test_a_subscription_period_is_judged_at_each_request() -> None:
    end = clock.now() + timedelta(hours=1)
    entry = _entry(paid_access_until=end)
    assert entry.may_be_subscribed(end - timedelta(seconds=1))
    assert not entry.may_be_subscribed(end)
    assert not _entry().may_be_subscribed(clock.now())


async def _counter_moves(
    session: AsyncSession, user_id: uuid.UUID, statement: str, **params: Any
) -> bool:
    before = await epoch(session)
    await session.execute(text(statement), params)
    await session.commit()
    after = await epoch(session)
    recorded = await session.scalar(select(AuthChange.epoch).where(AuthChange.user_id == user_id))
    await session.commit()
    return after > before and recorded == after


async def test_every_write_that_decides_a_key_moves_the_counter(
    app: FastAPI, session: AsyncSession, user: User
) -> None:
    key = (await create_api_key(session, user, "k")).record
    await session.commit()
    for column in User.__table__.columns:  # any column: a new one is covered as it is added
        if column.name == "id":
            continue
        value = {
            "email": f"new-{uuid.uuid4().hex[:6]}@example.com",
            "is_active": True,
            "created_at": clock.now() - timedelta(days=1),
            "last_login_at": clock.now(),
        }.get(column.name, "x" if column.name != "role" else "admin")
        moved = await _counter_moves(
            session,
            user.id,
            f"UPDATE users SET {column.name} = :v WHERE id = :id",  # noqa: S608 (the model's names)
            v=value,
            id=_db_id(session, user.id),
        )
        assert moved, f"users.{column.name}"
    for column in ("name", "revoked_at", "key_hash"):
        value = clock.now() if column == "revoked_at" else "y" * 64
        moved = await _counter_moves(
            session,
            user.id,
            f"UPDATE api_keys SET {column} = :v WHERE id = :id",  # noqa: S608 (names listed here)
            v=value,
            id=_db_id(session, key.id),
        )
        assert moved, f"api_keys.{column}"
    session.add(ApiKeyLimit(api_key_id=key.id, requests_per_minute=5))
    before = await epoch(session)
    await session.commit()
    assert await epoch(session) > before, "api_key_limits insert"
    subscription = BillingSubscription(stripe_subscription_id="sub_x", user_id=user.id)
    session.add(subscription)
    before = await epoch(session)
    await session.commit()
    assert await epoch(session) > before, "billing_subscriptions insert"
    assert await _counter_moves(
        session, user.id, "UPDATE billing_subscriptions SET stripe_status = 'active'"
    )
    assert await _counter_moves(session, user.id, "DELETE FROM billing_subscriptions")
    assert await _counter_moves(session, user.id, "DELETE FROM api_key_limits")


async def test_window_and_last_used_updates_leave_the_counter_alone(
    session: AsyncSession, user: User
) -> None:
    key = (await create_api_key(session, user, "k")).record
    session.add(ApiKeyLimit(api_key_id=key.id, requests_per_minute=5))
    await session.commit()
    before = await epoch(session)
    # The quota store moves a limited key's window on every request; the touch once a minute.
    await session.execute(text("UPDATE api_key_limits SET window_requests = window_requests + 1"))
    await session.execute(text("UPDATE api_keys SET last_used_at = :now"), {"now": clock.now()})
    await session.commit()
    assert await epoch(session) == before


EXPECTED_TRIGGERS = {
    f"auth_changes_{table}_{event}"
    for table, events in {
        "users": ("update", "delete"),
        "api_keys": ("update", "delete"),
        "api_key_limits": ("insert", "update", "delete"),
        "billing_subscriptions": ("insert", "update", "delete"),
    }.items()
    for event in events
}


async def test_the_counter_triggers_exist_at_head(session: AsyncSession) -> None:
    # SQLite drops a table's triggers when a migration rebuilds it (batch_alter_table): a later
    # migration that does so must create them again, or caches would stop seeing changes.
    if session.get_bind().dialect.name == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
    else:
        query = "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
    names = set((await session.execute(text(query))).scalars())
    assert names >= EXPECTED_TRIGGERS


def _db_id(session: AsyncSession, value: uuid.UUID) -> str:
    # Raw SQL sees uuids as stored: 32 hex digits on SQLite, the native type on PostgreSQL.
    return value.hex if session.get_bind().dialect.name == "sqlite" else str(value)


def _entry(user_id: uuid.UUID | None = None, *, paid_access_until: Any = None) -> CachedKey:
    user_id = user_id or uuid.uuid4()
    return CachedKey(
        api_key_id=uuid.uuid4(),
        user_id=user_id,
        user={"id": user_id},
        paid_access_until=paid_access_until,
        has_own_limits=False,
        last_used_at=None,
    )
