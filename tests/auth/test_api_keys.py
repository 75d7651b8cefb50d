"""API keys: shown once, stored hashed, accepted like a bearer token, not for key management."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.auth.api_keys import wait_for_touches
from kiban.core import clock
from kiban.models import ApiKey, User
from tests.auth.conftest import assert_auth_error, bearer, new_api_key


async def test_api_key_is_shown_once_and_stored_hashed(
    client: httpx.AsyncClient, user_headers: dict[str, str], session: AsyncSession
) -> None:
    created = await new_api_key(client, user_headers, name="ci")
    key = created["key"]
    assert key.startswith("kb_")
    assert created["prefix"] == key[: len(created["prefix"])]
    record = await session.scalar(select(ApiKey).where(ApiKey.id == uuid.UUID(created["id"])))
    assert record is not None
    assert record.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in (record.key_hash, record.lookup_id, record.name)
    listed = (await client.get("/auth/api-keys", headers=user_headers)).json()
    assert [k["prefix"] for k in listed] == [created["prefix"]]
    assert "key" not in listed[0]
    assert listed[0]["name"] == "ci"


async def test_api_key_authenticates_like_a_bearer_token(
    client: httpx.AsyncClient, user: User, user_headers: dict[str, str]
) -> None:
    key = (await new_api_key(client, user_headers))["key"]
    response = await client.get("/auth/me", headers=bearer(key))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == str(user.id)


async def test_api_key_cannot_manage_api_keys_or_password(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    created = await new_api_key(client, user_headers)
    headers = bearer(created["key"])
    for response in (
        await client.post("/auth/api-keys", json={"name": "x"}, headers=headers),
        await client.get("/auth/api-keys", headers=headers),
        await client.delete(f"/auth/api-keys/{created['id']}", headers=headers),
        await client.post(
            "/auth/password",
            json={"current_password": "whatever-long", "new_password": "another-long-password"},
            headers=headers,
        ),
    ):
        assert_auth_error(response, "access_token_required", status=403)


async def test_revoked_api_key_is_refused(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    created = await new_api_key(client, user_headers)
    response = await client.delete(f"/auth/api-keys/{created['id']}", headers=user_headers)
    assert response.status_code == 204
    error = assert_auth_error(
        await client.get("/auth/me", headers=bearer(created["key"])), "invalid_api_key"
    )
    assert "revoked" in error["message"]
    assert (await client.get("/auth/api-keys", headers=user_headers)).json() == []
    again = await client.delete(f"/auth/api-keys/{created['id']}", headers=user_headers)
    assert_auth_error(again, "api_key_not_found", status=404)


async def test_another_users_key_cannot_be_revoked(
    client: httpx.AsyncClient, user_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    created = await new_api_key(client, user_headers)
    response = await client.delete(f"/auth/api-keys/{created['id']}", headers=admin_headers)
    assert_auth_error(response, "api_key_not_found", status=404)
    assert (await client.get("/auth/me", headers=bearer(created["key"]))).status_code == 200


async def test_wrong_secret_with_known_lookup_id_is_refused(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    key = (await new_api_key(client, user_headers))["key"]
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert_auth_error(await client.get("/auth/me", headers=bearer(forged)), "invalid_api_key")


async def test_malformed_api_key_is_refused(client: httpx.AsyncClient) -> None:
    for credential in ("kb_", "kb_nothex000000_" + "a" * 43, "kb_short"):
        error = assert_auth_error(
            await client.get("/auth/me", headers=bearer(credential)), "invalid_api_key"
        )
        assert error["hint"]


async def test_api_key_of_inactive_user_is_refused(
    client: httpx.AsyncClient, user: User, user_headers: dict[str, str], session: AsyncSession
) -> None:
    key = (await new_api_key(client, user_headers))["key"]
    user.is_active = False
    session.add(user)
    await session.commit()
    assert_auth_error(await client.get("/auth/me", headers=bearer(key)), "user_inactive")


async def test_last_used_is_written_at_most_once_a_minute(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    created = await new_api_key(client, user_headers)
    headers = bearer(created["key"])

    async def last_used() -> object:
        await wait_for_touches()  # the write happens off the request path
        async with app.state.sessionmaker() as s:
            return await s.scalar(
                select(ApiKey.last_used_at).where(ApiKey.id == uuid.UUID(created["id"]))
            )

    start = clock.now()
    with clock.frozen(start):
        assert (await client.get("/auth/me", headers=headers)).status_code == 200
        first = await last_used()
        assert first == start
    with clock.frozen(start + timedelta(seconds=30)):
        assert (await client.get("/auth/me", headers=headers)).status_code == 200
        assert await last_used() == start  # not written again within the minute
    later = start + timedelta(seconds=61)
    with clock.frozen(later):
        assert (await client.get("/auth/me", headers=headers)).status_code == 200
        assert await last_used() == later
    listed = (await client.get("/auth/api-keys", headers=user_headers)).json()
    assert listed[0]["last_used_at"] is not None


async def test_api_key_name_is_validated(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.post("/auth/api-keys", json={"name": ""}, headers=user_headers)
    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["field"] == "name"


async def test_a_burst_of_requests_with_one_key_succeeds(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    """More concurrent requests than the pool has connections: none may stall on last-used."""
    key = (await new_api_key(client, user_headers))["key"]
    pool_size = app.state.settings.database_pool_size
    responses = await asyncio.gather(
        *(client.get("/auth/me", headers=bearer(key)) for _ in range(pool_size * 2))
    )
    assert {r.status_code for r in responses} == {200}
