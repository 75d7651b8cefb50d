"""Two kiban processes (uvicorn on real ports) on one database: a key revoked, or a user
deactivated, through one of them is refused by the other within the API-key cache's bound.

On SQLite that is what ``kiban serve --workers 2`` runs (two processes on one file); on
PostgreSQL, two instances behind a load balancer.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiban.auth.keys import load_keyring
from kiban.auth.verify import issue_access_token
from kiban.core.db import create_engine, create_sessionmaker
from kiban.models import Role, User
from kiban.settings import Settings
from tests.auth.conftest import bearer, within_the_bound
from tests.conftest import TEST_SECRET
from tests.served import Server

pytestmark = [pytest.mark.timeout(300)]
HITS = re.compile(r'^kiban_api_key_cache_total\{outcome="hit"\} (\S+)$', re.MULTILINE)


@pytest.fixture
def two_servers(database_url: str, tmp_path: Path) -> Iterator[list[Server]]:
    env = {
        **os.environ,
        "KIBAN_ENV": "test",
        "KIBAN_DATABASE_URL": database_url,
        "KIBAN_SECRET_KEY": TEST_SECRET,
        "KIBAN_DEV_SECRET_FILE": str(tmp_path / ".kiban-secret"),
    }
    env.pop("KIBAN_REDIS_URL", None)
    servers = [Server(env, tmp_path), Server(env, tmp_path)]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


async def insert_user(database_url: str, role: Role = Role.USER) -> User:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            user = User(
                email=f"c-{uuid.uuid4().hex[:10]}@example.com", password_hash="x", role=role
            )
            session.add(user)
            await session.commit()
            return user
    finally:
        await engine.dispose()


def token_for(settings: Settings, user: User) -> dict[str, str]:
    keyring, _ = load_keyring(settings)
    return bearer(issue_access_token(keyring, settings, user.id))


async def cache_hits(client: httpx.AsyncClient) -> float:
    response = await client.get("/metrics")
    assert response.status_code == 200
    found = HITS.search(response.text)
    return float(found.group(1)) if found else 0.0


async def key_cached_on_both(
    clients: list[httpx.AsyncClient], headers: dict[str, str]
) -> dict[str, Any]:
    """A new key, answered from the cache of each process (its hit counter moved)."""
    response = await clients[0].post("/auth/api-keys", json={"name": "ci"}, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    for client in clients:
        before = await cache_hits(client)
        for _ in range(2):  # the first read fills the cache, the second is a hit
            me = await client.get("/auth/me", headers=bearer(created["key"]))
            assert me.status_code == 200, me.text
        assert await cache_hits(client) > before
    return created


def refused_by(client: httpx.AsyncClient, key: str, code: str) -> Any:
    async def check() -> bool:
        response = await client.get("/auth/me", headers=bearer(key))
        if response.status_code == 200:
            return False
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == code
        return True

    return check


async def test_a_key_revoked_on_one_process_is_refused_by_the_other_within_the_bound(
    two_servers: list[Server], make_settings: Any, database_url: str
) -> None:
    settings = make_settings()
    user = await insert_user(database_url)
    headers = token_for(settings, user)
    clients = [httpx.AsyncClient(base_url=s.url, timeout=10) for s in two_servers]
    try:
        created = await key_cached_on_both(clients, headers)
        revoked = await clients[0].delete(f"/auth/api-keys/{created['id']}", headers=headers)
        assert revoked.status_code == 204
        # within_the_bound asserts the delay it observed is below the bound (1 s).
        await within_the_bound(refused_by(clients[1], created["key"], "invalid_api_key"))
        await within_the_bound(refused_by(clients[0], created["key"], "invalid_api_key"))
    finally:
        for client in clients:
            await client.aclose()


async def test_a_user_deactivated_on_one_process_is_refused_by_the_other_within_the_bound(
    two_servers: list[Server], make_settings: Any, database_url: str
) -> None:
    settings = make_settings()
    user = await insert_user(database_url)
    admin = await insert_user(database_url, Role.ADMIN)
    clients = [httpx.AsyncClient(base_url=s.url, timeout=10) for s in two_servers]
    try:
        created = await key_cached_on_both(clients, token_for(settings, user))
        response = await clients[0].patch(
            f"/admin/users/{user.id}", json={"is_active": False}, headers=token_for(settings, admin)
        )
        assert response.status_code == 200, response.text
        await within_the_bound(refused_by(clients[1], created["key"], "user_inactive"))
    finally:
        for client in clients:
            await client.aclose()
