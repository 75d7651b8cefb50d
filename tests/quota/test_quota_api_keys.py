"""API keys can carry their own rate limits, below their user's plan."""

from __future__ import annotations

from fastapi import FastAPI
from httpx import AsyncClient

from kiban.core import clock
from kiban.models import User
from tests.conftest import auth_headers, create_user

QUESTION = [{"role": "user", "content": "What does the fox do?"}]


async def new_key(client: AsyncClient, headers: dict[str, str], name: str) -> tuple[str, str]:
    response = await client.post("/auth/api-keys", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["key"]


async def chat(client: AsyncClient, key: str) -> int:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": QUESTION, "max_tokens": 10},
        headers={"Authorization": f"Bearer {key}"},
    )
    return response.status_code


async def test_a_key_with_limits_is_limited_and_the_others_are_not(
    app: FastAPI, client: AsyncClient, user: User
) -> None:
    with clock.frozen(clock.now().replace(second=5, microsecond=0)):
        headers = auth_headers(app, user)
        limited_id, limited = await new_key(client, headers, "ci")
        _, other = await new_key(client, headers, "laptop")
        put = await client.put(
            f"/me/api-keys/{limited_id}/limits", json={"requests_per_minute": 2}, headers=headers
        )
        assert put.status_code == 200, put.text
        assert put.json()["requests_per_minute"] == 2
        assert [await chat(client, limited) for _ in range(2)] == [200, 200]
        refused = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": QUESTION, "max_tokens": 10},
            headers={"Authorization": f"Bearer {limited}"},
        )
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["code"], error["limit_type"], error["limit"]) == (
            "rate_limited",
            "api_key_requests_per_minute",
            2,
        )
        assert refused.headers["Retry-After"] == "55"
        assert await chat(client, other) == 200  # the user's other key is not affected
        ok = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": QUESTION, "max_tokens": 10},
            headers={"Authorization": f"Bearer {other}"},
        )
        assert "X-RateLimit-Key-Limit" not in ok.headers
    # Removing the limits (both null) lifts them.
    cleared = await client.put(
        f"/me/api-keys/{limited_id}/limits",
        json={"requests_per_minute": None, "tokens_per_minute": None},
        headers=auth_headers(app, user),
    )
    assert cleared.status_code == 200
    got = await client.get(f"/me/api-keys/{limited_id}/limits", headers=auth_headers(app, user))
    assert got.json()["requests_per_minute"] is None


async def test_only_the_owner_or_an_admin_sets_a_keys_limits(
    app: FastAPI, client: AsyncClient, user: User, admin_headers: dict[str, str]
) -> None:
    key_id, key = await new_key(client, auth_headers(app, user), "ci")
    async with app.state.sessionmaker() as session:
        stranger = await create_user(session)
    other = await client.put(
        f"/me/api-keys/{key_id}/limits",
        json={"requests_per_minute": 1},
        headers=auth_headers(app, stranger),
    )
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "no_such_api_key"
    by_key = await client.put(
        f"/me/api-keys/{key_id}/limits",
        json={"requests_per_minute": 1},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert by_key.status_code in (401, 403)  # an API key cannot change key settings
    by_admin = await client.put(
        f"/admin/api-keys/{key_id}/limits",
        json={"requests_per_minute": 1, "tokens_per_minute": 5000},
        headers=admin_headers,
    )
    assert by_admin.status_code == 200
    assert by_admin.json()["tokens_per_minute"] == 5000
    bad = await client.put(
        f"/admin/api-keys/{key_id}/limits", json={"requests_per_minute": 0}, headers=admin_headers
    )
    assert bad.status_code == 422
