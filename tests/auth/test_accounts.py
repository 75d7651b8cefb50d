"""Register, sign in, refresh rotation and reuse detection, logout, password change."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.core import clock
from kiban.models import RefreshToken, User
from kiban.settings import Settings
from tests.auth.conftest import assert_auth_error, bearer, sign_in
from tests.conftest import DEFAULT_PASSWORD, create_user

NEW_PASSWORD = "a brand new passphrase"


async def test_register_normalizes_email_and_can_sign_in(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/register", json={"email": "  Alice@Example.COM ", "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["email"] == "alice@example.com"
    assert body["role"] == "user"
    assert "password" not in response.text
    tokens = await sign_in(client, "ALICE@example.com")
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 15 * 60
    me = await client.get("/auth/me", headers=bearer(tokens["access_token"]))
    assert me.json()["id"] == body["id"]
    assert me.json()["last_login_at"] is not None


async def test_register_twice_is_409_email_taken(client: httpx.AsyncClient) -> None:
    body = {"email": "bob@example.com", "password": DEFAULT_PASSWORD}
    assert (await client.post("/auth/register", json=body)).status_code == 201
    again = await client.post("/auth/register", json={**body, "email": " BOB@example.com"})
    assert_auth_error(again, "email_taken", status=409)


async def test_concurrent_registrations_create_one_account(client: httpx.AsyncClient) -> None:
    body = {"email": "race@example.com", "password": DEFAULT_PASSWORD}
    responses = await asyncio.gather(*(client.post("/auth/register", json=body) for _ in range(3)))
    assert sorted(r.status_code for r in responses) == [201, 409, 409]


async def test_register_password_policy_is_a_clear_422(client: httpx.AsyncClient) -> None:
    for password, words in (
        ("short", "at least 10"),
        ("aaaaaaaaaaaa", "different characters"),
        ("password123", "common"),
        ("x" * 200, "at most 128"),
    ):
        response = await client.post(
            "/auth/register", json={"email": "carol@example.com", "password": password}
        )
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert error["fields"][0]["field"] == "password"
        assert words in error["fields"][0]["message"]


async def test_register_invalid_email_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/register", json={"email": "not-an-email", "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["field"] == "email"


async def test_wrong_password_and_unknown_email_look_the_same(
    client: httpx.AsyncClient, user: User
) -> None:
    wrong = await client.post(
        "/auth/token", data={"username": user.email, "password": "not the password"}
    )
    unknown = await client.post(
        "/auth/token", data={"username": "nobody@example.com", "password": "not the password"}
    )
    first = assert_auth_error(wrong, "invalid_credentials")
    second = assert_auth_error(unknown, "invalid_credentials")
    assert (first["message"], first["hint"]) == (second["message"], second["hint"])
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"]


async def test_inactive_user_cannot_sign_in(
    client: httpx.AsyncClient, user: User, session: AsyncSession
) -> None:
    user.is_active = False
    await session.commit()
    response = await client.post(
        "/auth/token", data={"username": user.email, "password": DEFAULT_PASSWORD}
    )
    assert_auth_error(response, "user_inactive")


async def test_refresh_rotates_and_old_token_stops_working(
    client: httpx.AsyncClient, user: User
) -> None:
    first = await sign_in(client, user.email)
    response = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (await client.get("/auth/me", headers=bearer(second["access_token"]))).status_code == 200
    third = await client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert third.status_code == 200


async def test_refresh_token_reuse_revokes_family(
    client: httpx.AsyncClient, user: User, session: AsyncSession
) -> None:
    stolen = (await sign_in(client, user.email))["refresh_token"]
    legit = (await client.post("/auth/refresh", json={"refresh_token": stolen})).json()
    other_session = await sign_in(client, user.email)  # another device: a different family
    # The thief replays the rotated token: the whole family is revoked ...
    replay = await client.post("/auth/refresh", json={"refresh_token": stolen})
    error = assert_auth_error(replay, "token_revoked")
    assert "already used" in error["message"]
    # ... including the legitimate holder's newest token.
    victim = await client.post("/auth/refresh", json={"refresh_token": legit["refresh_token"]})
    assert_auth_error(victim, "token_revoked")
    reasons = set(
        (
            await session.scalars(
                select(RefreshToken.revoked_reason).where(RefreshToken.user_id == user.id)
            )
        ).all()
    )
    assert reasons == {"rotated", "reuse_detected", None}
    # The other device is untouched.
    ok = await client.post("/auth/refresh", json={"refresh_token": other_session["refresh_token"]})
    assert ok.status_code == 200


async def test_concurrent_refreshes_with_one_token_cannot_both_succeed(
    app: FastAPI, user: User
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        token = (await sign_in(client, user.email))["refresh_token"]
        responses = await asyncio.gather(
            *(client.post("/auth/refresh", json={"refresh_token": token}) for _ in range(4))
        )
    statuses = sorted(r.status_code for r in responses)
    # One may win (the others then revoke its family as a replay), or the losers' replay
    # detection may land first; never two successes, never a 500.
    assert statuses.count(200) <= 1, statuses
    assert set(statuses) <= {200, 401}, statuses
    codes = {r.json()["error"]["code"] for r in responses if r.status_code == 401}
    assert codes == {"token_revoked"}


async def test_unknown_and_expired_refresh_tokens(
    client: httpx.AsyncClient, user: User, settings: Settings
) -> None:
    unknown = await client.post("/auth/refresh", json={"refresh_token": "never-issued"})
    assert_auth_error(unknown, "token_revoked")
    token = (await sign_in(client, user.email))["refresh_token"]
    with clock.shifted(timedelta(seconds=settings.refresh_token_ttl_seconds + 1)):
        expired = await client.post("/auth/refresh", json={"refresh_token": token})
    assert_auth_error(expired, "token_expired")


async def test_long_expired_refresh_tokens_are_purged_at_the_next_sign_in(
    client: httpx.AsyncClient, user: User, settings: Settings, session: AsyncSession
) -> None:
    # A client that refreshes often leaves a rotated row per refresh.
    token = (await sign_in(client, user.email))["refresh_token"]
    for _ in range(3):
        r = await client.post("/auth/refresh", json={"refresh_token": token})
        token = r.json()["refresh_token"]
    ttl = timedelta(seconds=settings.refresh_token_ttl_seconds)
    with clock.shifted(ttl + timedelta(days=6)):  # expired, but recently: kept (says "expired")
        await sign_in(client, user.email)
        expired = await client.post("/auth/refresh", json={"refresh_token": token})
        assert_auth_error(expired, "token_expired")
    rows = select(RefreshToken.id).where(RefreshToken.user_id == user.id)
    assert len((await session.scalars(rows)).all()) == 5
    with clock.shifted(ttl + timedelta(days=8)):  # long expired: gone at the next sign-in
        await sign_in(client, user.email)
    session.expire_all()
    assert len((await session.scalars(rows)).all()) == 2  # the two sign-ins' live tokens


async def test_logout_revokes_the_refresh_token(client: httpx.AsyncClient, user: User) -> None:
    tokens = await sign_in(client, user.email)
    response = await client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 204
    again = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    error = assert_auth_error(again, "token_revoked")
    assert "logout" in error["message"]
    # Logging out twice, or with an unknown token, is harmless.
    assert (await client.post("/auth/logout", json={"refresh_token": "x"})).status_code == 204


async def test_password_change_revokes_all_refresh_tokens(
    client: httpx.AsyncClient, user: User
) -> None:
    laptop = await sign_in(client, user.email)
    phone = await sign_in(client, user.email)
    wrong = await client.post(
        "/auth/password",
        json={"current_password": "not it at all", "new_password": NEW_PASSWORD},
        headers=bearer(laptop["access_token"]),
    )
    assert_auth_error(wrong, "wrong_password", status=403)
    response = await client.post(
        "/auth/password",
        json={"current_password": DEFAULT_PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(laptop["access_token"]),
    )
    assert response.status_code == 204, response.text
    for tokens in (laptop, phone):
        refreshed = await client.post(
            "/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert_auth_error(refreshed, "token_revoked")
    old = await client.post(
        "/auth/token", data={"username": user.email, "password": DEFAULT_PASSWORD}
    )
    assert_auth_error(old, "invalid_credentials")
    await sign_in(client, user.email, NEW_PASSWORD)


async def test_password_change_applies_the_policy(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.post(
        "/auth/password",
        json={"current_password": DEFAULT_PASSWORD, "new_password": "short"},
        headers=user_headers,
    )
    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["field"] == "new_password"


async def test_openapi_declares_the_password_flow(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    schemes = schema["components"]["securitySchemes"]
    flows = next(iter(schemes.values()))["flows"]
    assert flows["password"]["tokenUrl"] == "/auth/token"


async def test_a_burst_of_sign_ins_does_not_exhaust_the_pool(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    """More concurrent sign-ins than the pool has connections all succeed."""
    pool_size = app.state.settings.database_pool_size
    users = [await create_user(session) for _ in range(pool_size + 2)]
    responses = await asyncio.gather(
        *(
            client.post("/auth/token", data={"username": u.email, "password": DEFAULT_PASSWORD})
            for u in users
        )
    )
    assert [r.status_code for r in responses] == [200] * len(users)
