"""The dashboard's reuse interval for refresh cookies: only for dashboard sign-ins, never able to
bring a revoked sign-in back."""

from __future__ import annotations

from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.auth import refresh
from kiban.auth.verify import issue_access_token
from kiban.core import clock
from kiban.models import RefreshToken, User
from tests.auth.conftest import sign_in
from tests.conftest import create_user, make_client


async def live_tokens(session: AsyncSession, user: User) -> int:
    count = select(func.count()).select_from(RefreshToken)
    live = count.where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
    session.expire_all()  # read what the app's requests committed
    return int(await session.scalar(live) or 0)


async def test_an_api_refresh_token_replayed_as_a_cookie_gets_no_interval(
    client: httpx.AsyncClient, app: FastAPI, user: User, session: AsyncSession
) -> None:
    # A thief holds a copy of an API client's refresh token and any validly signed (expired)
    # access token, and replays the copy as the dashboard's cookie within 10 s of the real
    # client's rotation: that is a replay, not a second browser tab.
    thief = await create_user(session)
    thief_jwt = issue_access_token(app.state.keyring, app.state.settings, thief.id)
    stolen = (await sign_in(client, user.email))["refresh_token"]
    assert stolen.startswith("kbr_")
    ttl = app.state.settings.access_token_ttl_seconds
    with clock.shifted(timedelta(seconds=ttl + 120)):
        assert (await client.post("/auth/refresh", json={"refresh_token": stolen})).is_success
        cookies = {"kiban_session": thief_jwt, "kiban_refresh": stolen}
        async with make_client(app, cookies=cookies) as browser:
            page = await browser.get("/account")
    assert page.status_code == 303  # sent to sign in
    assert user.email not in page.text
    assert await live_tokens(session, user) == 0  # the whole sign-in is revoked


async def test_a_successor_issued_while_its_sign_in_was_revoked_is_refused(
    client: httpx.AsyncClient, app: FastAPI, user: User, session: AsyncSession
) -> None:
    # The state a reuse-interval successor racing a logout can leave behind: the family was
    # signed out, and one token of it, inserted meanwhile, is still live.
    first = await refresh.issue(session, app.state.settings, user, web=True)
    record = await refresh.find(session, first)
    assert record is not None
    late = await refresh.issue(session, app.state.settings, user, record.family_id, web=True)
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == record.id)
        .values(revoked_at=clock.now(), revoked_reason=refresh.LOGOUT)
    )
    await session.commit()
    r = await client.post("/auth/refresh", json={"refresh_token": late})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "token_revoked"
    assert "logout" in r.json()["error"]["message"]
    assert await live_tokens(session, user) == 0
