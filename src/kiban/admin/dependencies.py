"""Typed dependencies of the admin package: the analytics window, and who may read analytics."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Query, Request, Response

from kiban.admin.analytics import Window
from kiban.admin.web_auth import current_viewer, set_session_cookies
from kiban.auth import KeyRingDep, RoleRequired, bearer_credentials, get_admin_user, get_principal
from kiban.core import clock
from kiban.core.db import SessionDep
from kiban.core.dependencies import SettingsDep
from kiban.models import User


async def get_window(
    start: Annotated[
        datetime | None, Query(alias="from", description="Window start (ISO 8601; naive = UTC).")
    ] = None,
    end: Annotated[
        datetime | None, Query(alias="to", description="Window end, exclusive (default: now).")
    ] = None,
) -> Window:
    """The ``[from, to)`` window of an analytics request (default: the last 7 days)."""
    return Window.parse(start, end, clock.now())


async def get_analytics_admin(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    keyring: KeyRingDep,
) -> User:
    """An admin, by bearer token or API key, or by the dashboard's session cookie.

    The cookie is accepted because the dashboard links to these read-only GET endpoints (the CSV
    export); nothing here changes state, so a cross-site request gains nothing.
    """
    if "authorization" not in request.headers:
        viewer = await current_viewer(request, session, settings, keyring)
        if viewer is not None:
            if not viewer.user.is_admin:
                raise RoleRequired("admin")
            if viewer.renewed is not None:
                # The refresh token was rotated: the browser must get the new pair, or its next
                # request would replay the old one (and be signed out as a reuse).
                set_session_cookies(response, request, settings, viewer.renewed)
                request.state.renewed_session = viewer.renewed
            return viewer.user
    # No usable cookie: the bearer path, with its precise 401s.
    token = await bearer_credentials(request)
    state = request.app.state
    principal = await get_principal(
        request, token, session, settings, keyring, state.sessionmaker, state.api_key_cache
    )
    return await get_admin_user(principal.user)


WindowDep = Annotated[Window, Depends(get_window)]
AnalyticsAdmin = Annotated[User, Depends(get_analytics_admin)]
