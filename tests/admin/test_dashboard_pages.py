"""The dashboard and account pages over HTTP: cookie sign-in, CSRF, renewal, and what they show."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.app import create_app
from kiban.core import clock
from kiban.models import ApiKey, RefreshToken, User
from kiban.settings import Settings
from tests.conftest import DEFAULT_PASSWORD, RunningApp, create_user, make_client
from tests.factories import make_records, write_records

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def sign_in(client: httpx.AsyncClient, email: str, next_: str = "/admin") -> httpx.Response:
    page = await client.get("/login", params={"next": next_})
    token = CSRF.search(page.text)
    assert token, page.text
    return await client.post(
        "/login",
        data={"email": email, "password": DEFAULT_PASSWORD, "csrf_token": token[1], "next": next_},
    )


def _metric(html: str, name: str) -> str:
    found = re.search(rf'data-metric="{name}">.*?class="value">([^<]*)<', html, re.S)
    assert found, name
    return found[1]


async def live_refresh_tokens(session: AsyncSession, user: User) -> int:
    """How many of the user's refresh tokens are still usable (not revoked)."""
    count = select(func.count()).select_from(RefreshToken)
    live = count.where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
    return int(await session.scalar(live) or 0)


async def test_signed_out_browsers_are_sent_to_sign_in(client: httpx.AsyncClient) -> None:
    r = await client.get("/admin/requests?status=ok")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fadmin%2Frequests%3Fstatus%3Dok"
    assert (await client.get("/account")).status_code == 303


async def test_admin_signs_in_and_sees_the_summary(
    client: httpx.AsyncClient, admin: User, session: AsyncSession
) -> None:
    now = clock.now()
    records = make_records(120, [admin.id], hours=20)
    for r in records:
        r.created_at = now - (r.created_at - records[0].created_at) % timedelta(hours=20)
    await write_records(session, records)
    r = await sign_in(client, admin.email)
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/admin"
    cookie = r.headers.get_list("set-cookie")
    assert any(
        c.startswith("kiban_session=") and "HttpOnly" in c and "SameSite=lax" in c for c in cookie
    )
    page = await client.get("/admin?range=24h")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert _metric(page.text, "requests") == f"{len(records):,}"
    tokens = sum(r.total_tokens for r in records)
    assert _metric(page.text, "tokens") == f"{tokens:,}"
    assert page.text.count("<svg") >= 5
    assert "cdn" not in page.text.lower()
    assert "<script" not in page.text
    assert (await client.get("/admin/static/kiban.css")).status_code == 200


async def test_sign_in_needs_the_csrf_token_and_the_right_password(
    client: httpx.AsyncClient, admin: User
) -> None:
    await client.get("/login")
    r = await client.post("/login", data={"email": admin.email, "password": DEFAULT_PASSWORD})
    assert r.status_code == 403
    assert "security token" in r.text
    for forged in ("é", "トークン"):  # not ASCII: still a plain refusal, never a 500
        r = await client.post(
            "/login",
            data={"email": admin.email, "password": DEFAULT_PASSWORD, "csrf_token": forged},
        )
        assert r.status_code == 403
    token = CSRF.search((await client.get("/login")).text)
    assert token
    r = await client.post(
        "/login", data={"email": admin.email, "password": "wrong password!", "csrf_token": token[1]}
    )
    assert r.status_code == 401
    assert "email or password is not correct" in r.text
    assert "kiban_session" not in client.cookies


async def test_sign_in_never_redirects_off_site(client: httpx.AsyncClient, user: User) -> None:
    r = await sign_in(client, user.email, next_="//evil.example/steal")
    assert r.headers["location"] == "/account"


async def test_users_get_their_account_page_but_not_the_dashboard(
    client: httpx.AsyncClient, user: User
) -> None:
    await sign_in(client, user.email, next_="/account")
    assert (await client.get("/admin")).status_code == 403
    page = await client.get("/account")
    assert page.status_code == 200
    assert user.email in page.text
    assert 'role="progressbar"' in page.text


async def test_usage_log_page_filters_by_status_and_user(
    client: httpx.AsyncClient, admin: User, user: User, session: AsyncSession
) -> None:
    now = clock.now()
    records = make_records(80, [admin.id, user.id], hours=1)
    for r in records:
        r.created_at = now - timedelta(minutes=5)
    await write_records(session, records)
    await sign_in(client, admin.email)
    page = await client.get("/admin/requests", params={"status": "error", "user": user.email})
    statuses = re.findall(r'<tr data-status="([^"]+)"', page.text)
    want = [r for r in records if r.status == "error" and r.user_id == user.id]
    assert statuses == ["error"] * len(want)
    assert len(want) > 0
    missing = await client.get("/admin/requests", params={"user": "nobody@example.com"})
    assert "No user matches" in missing.text


async def test_usage_log_pages_with_a_cursor(
    client: httpx.AsyncClient, admin: User, session: AsyncSession
) -> None:
    now = clock.now()
    records = make_records(130, [admin.id], hours=1)
    for r in records:
        r.created_at = now - timedelta(minutes=1)
    await write_records(session, records)
    await sign_in(client, admin.email)
    seen = 0
    url: str | None = "/admin/requests"
    while url:
        page = await client.get(url)
        seen += len(re.findall(r"<tr data-status=", page.text))
        older = re.search(r'<a rel="next" href="([^"]+)"', page.text)
        url = older[1].replace("&amp;", "&") if older else None
    assert seen == len(records)


async def test_user_page_shows_plan_quota_and_recent_requests(
    client: httpx.AsyncClient, admin: User, user: User, session: AsyncSession
) -> None:
    records = make_records(5, [user.id], hours=1)
    for r in records:
        r.created_at = clock.now() - timedelta(minutes=3)
    await write_records(session, records)
    await sign_in(client, admin.email)
    page = await client.get(f"/admin/accounts/{user.id}")
    assert page.status_code == 200
    assert user.email in page.text
    assert "Free</strong> plan" in page.text
    assert len(re.findall(r"<tr data-status=", page.text)) == 5


async def test_api_keys_are_created_and_revoked_with_csrf(
    client: httpx.AsyncClient, user: User, session: AsyncSession
) -> None:
    await sign_in(client, user.email, next_="/account")
    page = await client.get("/account")
    token = CSRF.search(page.text)
    assert token
    forged = await client.post("/account/api-keys", data={"name": "ci"})
    assert forged.status_code == 403
    created = await client.post("/account/api-keys", data={"name": "ci", "csrf_token": token[1]})
    assert created.status_code == 200
    secret = re.search(r"<code>(kb_[^<]+)</code>", created.text)
    assert secret
    key = await session.scalar(select(ApiKey).where(ApiKey.user_id == user.id))
    assert key is not None
    r = await client.post(f"/account/api-keys/{key.id}/revoke", data={"csrf_token": token[1]})
    assert r.status_code == 303
    await session.refresh(key)
    assert key.revoked_at is not None


async def test_expired_session_is_renewed_with_the_refresh_cookie(
    client: httpx.AsyncClient, app: FastAPI, admin: User
) -> None:
    await sign_in(client, admin.email)
    old = client.cookies["kiban_session"]
    ttl = app.state.settings.access_token_ttl_seconds
    with clock.shifted(timedelta(seconds=ttl + 120)):
        r = await client.get("/admin")
    assert r.status_code == 200
    assert client.cookies["kiban_session"] != old


async def test_sign_out_revokes_the_session(
    client: httpx.AsyncClient, admin: User, session: AsyncSession
) -> None:
    await sign_in(client, admin.email)
    token = CSRF.search((await client.get("/admin")).text)
    assert token
    r = await client.post("/logout", data={"csrf_token": token[1]})
    assert r.status_code == 303
    assert "kiban_session" not in client.cookies
    assert await live_refresh_tokens(session, admin) == 0
    assert (await client.get("/admin")).status_code == 303


async def test_export_by_cookie_renews_an_expired_session(
    client: httpx.AsyncClient, app: FastAPI, admin: User
) -> None:
    await sign_in(client, admin.email)
    old_refresh = client.cookies["kiban_refresh"]
    ttl = app.state.settings.access_token_ttl_seconds
    with clock.shifted(timedelta(seconds=ttl + 120)):
        r = await client.get("/admin/analytics/export.csv")
        assert r.status_code == 200
        assert r.text.startswith("id,request_id,")
        assert client.cookies["kiban_refresh"] != old_refresh
        # The rotated pair works; replaying the old refresh token would have signed us out.
        assert (await client.get("/admin/analytics/summary")).status_code == 200
        assert (await client.get("/admin")).status_code == 200


async def test_two_tabs_renewing_the_same_cookie_at_once_stay_signed_in(
    client: httpx.AsyncClient, app: FastAPI, admin: User, session: AsyncSession
) -> None:
    await sign_in(client, admin.email)
    cookies = {k: client.cookies[k] for k in ("kiban_session", "kiban_refresh")}
    ttl = app.state.settings.access_token_ttl_seconds
    with clock.shifted(timedelta(seconds=ttl + 120)):
        async with (
            make_client(app, cookies=cookies) as tab1,
            make_client(app, cookies=cookies) as tab2,
        ):
            pages = await asyncio.gather(tab1.get("/admin"), tab2.get("/admin"))
            # Both tabs render (no sign-in redirect), each with a renewed pair that works.
            assert [p.status_code for p in pages] == [200, 200]
            again = await asyncio.gather(tab1.get("/admin"), tab2.get("/admin"))
            assert [p.status_code for p in again] == [200, 200]
    # One live token per tab, in the same sign-in (nothing was revoked as a replay).
    assert await live_refresh_tokens(session, admin) == 2


async def test_replayed_refresh_cookie_revokes_the_family_even_on_a_401(
    client: httpx.AsyncClient, app: FastAPI, admin: User, session: AsyncSession
) -> None:
    await sign_in(client, admin.email)
    stolen = {k: client.cookies[k] for k in ("kiban_session", "kiban_refresh")}
    ttl = app.state.settings.access_token_ttl_seconds
    with clock.shifted(timedelta(seconds=ttl + 120)):
        assert (await client.get("/admin")).status_code == 200  # the victim renews first
    # A minute later (past the tabs' grace), the thief replays the spent pair on a
    # cookie-or-bearer endpoint: refused with a 401 ...
    with clock.shifted(timedelta(seconds=ttl + 180)):
        async with make_client(app, cookies=stolen) as thief:
            r = await thief.get("/admin/analytics/summary")
        assert r.status_code == 401
    # ... and the whole sign-in is revoked, though that request failed.
    assert await live_refresh_tokens(session, admin) == 0


@pytest.mark.parametrize("env", ["production", "development"])
async def test_cookies_are_secure_in_production_even_over_plain_http(
    make_settings: Callable[..., Settings], admin: User, env: str
) -> None:
    # Behind a TLS proxy whose X-Forwarded-Proto is not trusted, requests look like http: in
    # production the cookies must still never travel in clear. (A browser would not send a
    # Secure cookie back over http; the CSRF cookie is sent by hand here.)
    async with RunningApp(create_app(make_settings(env=env))) as app, make_client(app) as client:
        page = await client.get("/login")
        token = CSRF.search(page.text)
        assert token
        signed_in = await client.post(
            "/login",
            data={"email": admin.email, "password": DEFAULT_PASSWORD, "csrf_token": token[1]},
            headers={"Cookie": f"kiban_csrf={client.cookies['kiban_csrf']}"},
        )
    assert signed_in.status_code == 303, signed_in.text
    cookies = [*page.headers.get_list("set-cookie"), *signed_in.headers.get_list("set-cookie")]
    names = {c.split("=", 1)[0] for c in cookies}
    assert names == {"kiban_csrf", "kiban_session", "kiban_refresh"}
    assert all(("; secure" in c.lower()) == (env == "production") for c in cookies), cookies


def _mix_labels(html: str, title: str) -> list[str]:
    chart = re.search(rf'<svg [^>]*aria-label="{title}">.*?</svg>', html, re.S)
    assert chart, title
    return re.findall(r'text-anchor="end">([^<]*)</text>', chart[0])


async def test_the_dashboard_names_endpoints_by_the_paths_clients_call(
    client: httpx.AsyncClient, app: FastAPI, admin: User, admin_headers: dict[str, str]
) -> None:
    # A different number of requests per path, so each path's rows can be told apart.
    ask = {"prompt": "What is kiban?", "model": "extractive"}
    chat = {"model": "extractive", "messages": [{"role": "user", "content": "What is kiban?"}]}
    calls = {"/ai/test": (ask, 1), "/ai/stream": (ask, 2), "/v1/chat/completions": (chat, 3)}
    for path, (body, times) in calls.items():
        for _ in range(times):
            r = await client.post(path, json=body, headers=admin_headers)
            assert r.status_code == 200, r.text
    await app.state.gateway.ledger.flush()
    await sign_in(client, admin.email)

    page = await client.get("/admin/requests")
    rows = re.findall(
        r'<tr data-status="[^"]*" data-model="[^"]*" data-endpoint="([^"]*)">'
        r"(?:\s*<td>.*?</td>){2}\s*<td>([^<]*)</td>",
        page.text,
    )
    shown = {path: sum(1 for _, p in rows if p == path) for path in calls}
    assert shown == {path: times for path, (_, times) in calls.items()}
    names = {name for name, _ in rows}
    # The filter offers the paths, and sends the ledger's names.
    options = dict(re.findall(r'<option value="([^"]+)" >([^<]*)</option>', page.text))
    assert {options[name] for name in names} == set(calls)

    overview = await client.get("/admin?range=24h")
    assert sorted(_mix_labels(overview.text, "Requests by endpoint")) == sorted(calls)


async def test_the_requests_filter_takes_an_endpoint_by_name_or_by_path(
    client: httpx.AsyncClient, admin: User, session: AsyncSession
) -> None:
    records = make_records(60, [admin.id], hours=1)
    for r in records:
        r.created_at = clock.now() - timedelta(minutes=5)
    await write_records(session, records)
    await sign_in(client, admin.email)
    want = sum(1 for r in records if r.endpoint == "ai_stream")
    assert want > 0
    for value in ("ai_stream", "/ai/stream"):
        page = await client.get("/admin/requests", params={"endpoint": value})
        endpoints = re.findall(r'data-endpoint="([^"]*)"', page.text)
        assert endpoints == ["ai_stream"] * want, value
        assert '<option value="ai_stream" selected>/ai/stream</option>' in page.text


async def test_the_overview_counts_registered_users(
    client: httpx.AsyncClient, admin: User, session: AsyncSession
) -> None:
    await create_user(session, email="new@example.com")
    await create_user(session, email="gone@example.com", is_active=False)
    await create_user(session, email="old@example.com", created_at=clock.now() - timedelta(days=30))
    await sign_in(client, admin.email)
    page = await client.get("/admin?range=7d")
    assert _metric(page.text, "users") == "4"
    card = re.search(r'data-metric="users">.*?class="sub">([^<]*)<', page.text, re.S)
    assert card
    assert card[1] == "3 active · 3 joined in this window"
    # A user's own cards are about their usage: no count of everyone there.
    assert 'data-metric="users"' not in (await client.get("/account")).text


async def test_the_favicon_is_linked_and_answers_at_favicon_ico(client: httpx.AsyncClient) -> None:
    page = await client.get("/login")
    link = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', page.text)
    assert link
    assert link[1].startswith("/admin/static/")  # served here, no CDN
    linked = await client.get(link[1])
    assert linked.status_code == 200
    assert linked.content.startswith(b"<svg ")
    # Browsers ask for /favicon.ico whatever the page links.
    ico = await client.get("/favicon.ico")
    assert ico.status_code == 200
    assert ico.headers["content-type"] == "image/svg+xml"
    assert ico.content == linked.content
