"""Roles and admin user management."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.models import Role, User
from tests.auth.conftest import assert_auth_error, bearer, new_api_key, sign_in
from tests.conftest import create_user


async def test_user_gets_403_naming_the_missing_role(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.get("/admin/users", headers=user_headers)
    error = assert_auth_error(response, "role_required", status=403)
    assert error["required_role"] == "admin"
    assert "admin" in error["message"]


async def test_admin_endpoints_need_credentials(client: httpx.AsyncClient) -> None:
    assert_auth_error(await client.get("/admin/users"), "missing_credentials")


async def test_admin_lists_users_paginated(
    client: httpx.AsyncClient, admin: User, admin_headers: dict[str, str], session: AsyncSession
) -> None:
    for i in range(4):
        await create_user(session, email=f"member{i}@example.com")
    page = (await client.get("/admin/users?limit=2&offset=0", headers=admin_headers)).json()
    assert page["total"] == 5
    assert page["limit"] == 2
    assert len(page["items"]) == 2
    rest = (await client.get("/admin/users?limit=2&offset=4", headers=admin_headers)).json()
    assert len(rest["items"]) == 1
    seen = {u["id"] for u in page["items"]} | {u["id"] for u in rest["items"]}
    assert len(seen) == 3
    found = (await client.get("/admin/users?email=MEMBER3", headers=admin_headers)).json()
    assert [u["email"] for u in found["items"]] == ["member3@example.com"]
    admins = (await client.get("/admin/users?role=admin", headers=admin_headers)).json()
    assert [u["id"] for u in admins["items"]] == [str(admin.id)]
    bad = await client.get("/admin/users?limit=1000", headers=admin_headers)
    assert bad.status_code == 422
    huge = await client.get(f"/admin/users?offset={2**63}", headers=admin_headers)
    assert huge.status_code == 422  # not a driver overflow (a 500)


async def test_admin_promotes_and_deactivates(
    client: httpx.AsyncClient, user: User, admin_headers: dict[str, str]
) -> None:
    tokens = await sign_in(client, user.email)
    promoted = await client.patch(
        f"/admin/users/{user.id}", json={"role": "admin"}, headers=admin_headers
    )
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["role"] == "admin"
    assert (
        await client.get("/admin/users", headers=bearer(tokens["access_token"]))
    ).status_code == 200
    off = await client.patch(
        f"/admin/users/{user.id}", json={"is_active": False}, headers=admin_headers
    )
    assert off.json()["is_active"] is False
    assert_auth_error(
        await client.get("/auth/me", headers=bearer(tokens["access_token"])), "user_inactive"
    )
    refreshed = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert_auth_error(refreshed, "token_revoked")


async def test_admin_cannot_demote_or_deactivate_self(
    client: httpx.AsyncClient, admin: User, admin_headers: dict[str, str]
) -> None:
    for change in ({"role": "user"}, {"is_active": False}):
        response = await client.patch(
            f"/admin/users/{admin.id}", json=change, headers=admin_headers
        )
        assert_auth_error(response, "cannot_change_self", status=409)


async def test_patch_validates_input(
    client: httpx.AsyncClient, user: User, admin_headers: dict[str, str]
) -> None:
    bad_role = await client.patch(
        f"/admin/users/{user.id}", json={"role": "superuser"}, headers=admin_headers
    )
    assert bad_role.status_code == 422
    unknown_field = await client.patch(
        f"/admin/users/{user.id}", json={"password_hash": "x"}, headers=admin_headers
    )
    assert unknown_field.status_code == 422
    missing = await client.patch(
        f"/admin/users/{uuid.uuid4()}", json={"role": "admin"}, headers=admin_headers
    )
    assert_auth_error(missing, "no_such_user", status=404)


async def test_admin_api_key_works_for_admin_routes(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    admin = await create_user(session, role=Role.ADMIN)
    tokens = await sign_in(client, admin.email)
    key = (await new_api_key(client, bearer(tokens["access_token"])))["key"]
    assert (await client.get("/admin/users", headers=bearer(key))).status_code == 200
