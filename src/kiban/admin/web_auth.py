"""Browser sign-in for the dashboard and the account page: HttpOnly cookies, CSRF-checked forms.

Nothing here verifies a password or signs a token itself: sign-in is ``auth.service.sign_in``
(throttled, timing-safe), the session cookie holds the access token it issues, and an expired
one is renewed with the refresh token (``auth.service.refresh_tokens``, rotated on use).

- ``kiban_session``: the access JWT. ``kiban_refresh``: the refresh token. Both HttpOnly,
  ``SameSite=Lax``, ``Secure`` over HTTPS.
- ``kiban_csrf``: a random token, HttpOnly, ``SameSite=Strict``, that every form (sign-in included)
  echoes in a hidden field; a POST whose field does not match is refused (double submit). Pages
  only read with GET, so a cross-site link can at most show a signed-in user their own page.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.admin.exceptions import CsrfFailed
from kiban.auth import (
    AuthenticationError,
    FamilyRevoked,
    IssuedTokens,
    KeyRing,
    TokenExpired,
    refresh_tokens,
    verify_access_token,
)
from kiban.models import User
from kiban.settings import Settings

SESSION_COOKIE = "kiban_session"
REFRESH_COOKIE = "kiban_refresh"
CSRF_COOKIE = "kiban_csrf"
CSRF_FIELD = "csrf_token"
# Tabs of one browser share the cookies: when the access cookie expires, several of them may
# renew with the same refresh cookie at once. Within this window that is not a replay (the
# family is not revoked; each gets a successor). API clients get no such window.
COOKIE_REUSE_GRACE = timedelta(seconds=10)


@dataclass
class Viewer:
    """The signed-in browser user, and the cookies to renew on the response (if any)."""

    user: User
    renewed: IssuedTokens | None = None


def _secure(request: Request) -> bool:
    # Production is served over HTTPS, whatever the request's scheme says: behind a proxy that
    # kiban does not trust with X-Forwarded-Proto it would read "http" and leave cookies
    # sendable in clear. Elsewhere (a laptop on http://127.0.0.1), follow the scheme.
    settings: Settings = request.app.state.settings
    return settings.env == "production" or request.url.scheme == "https"


def set_session_cookies(
    response: Response, request: Request, settings: Settings, issued: IssuedTokens
) -> None:
    """Store a signed-in session's tokens in HttpOnly cookies."""
    common = {"httponly": True, "samesite": "lax", "secure": _secure(request), "path": "/"}
    lifetime = settings.refresh_token_ttl_seconds
    response.set_cookie(SESSION_COOKIE, issued.access_token, max_age=lifetime, **common)  # type: ignore[arg-type]
    response.set_cookie(REFRESH_COOKIE, issued.refresh_token, max_age=lifetime, **common)  # type: ignore[arg-type]


def clear_session_cookies(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(REFRESH_COOKIE, path="/")


async def current_viewer(
    request: Request, session: AsyncSession, settings: Settings, keyring: KeyRing
) -> Viewer | None:
    """The user signed in by cookie, renewing an expired access token; None when signed out."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    renewed = None
    try:
        claims = verify_access_token(keyring, settings, token)
        user_id = claims.sub
    except TokenExpired:
        refresh_token = request.cookies.get(REFRESH_COOKIE)
        if not refresh_token:
            return None
        try:
            renewed = await refresh_tokens(
                session, keyring, settings, refresh_token, reuse_grace=COOKIE_REUSE_GRACE
            )
        except FamilyRevoked:
            # A replayed refresh cookie: the family's revocation must outlive this request even
            # when the caller goes on to fail it (a 401 rolls the request's session back).
            await session.commit()
            return None
        except AuthenticationError:
            return None
        user_id = verify_access_token(keyring, settings, renewed.access_token).sub
    except AuthenticationError:
        return None
    user = await session.get(User, user_id)
    if user is None or not user.is_active:
        return None
    request.scope.setdefault("state", {})["user_id"] = str(user.id)
    return Viewer(user=user, renewed=renewed)


def finish(
    response: Response, request: Request, settings: Settings, viewer: Viewer | None
) -> Response:
    """Attach renewed session cookies (if the access token was renewed) to a page response."""
    if viewer is not None and viewer.renewed is not None:
        set_session_cookies(response, request, settings, viewer.renewed)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def sign_in_redirect(request: Request) -> RedirectResponse:
    """Send a signed-out browser to the sign-in page, coming back here afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def safe_next(value: str | None, default: str) -> str:
    """A local path to go to after sign-in (never another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value


def csrf_token(request: Request) -> str:
    """This browser's CSRF token (a new one if it has none yet; see ``issue_csrf_cookie``)."""
    existing = request.cookies.get(CSRF_COOKIE)
    if existing and 20 <= len(existing) <= 100:
        return existing
    token: str = request.scope.setdefault("state", {}).setdefault(
        "csrf_token", secrets.token_urlsafe(32)
    )
    return token


def issue_csrf_cookie(response: Response, request: Request) -> None:
    """Set the CSRF cookie when the page just handed out a new token."""
    token = request.scope.get("state", {}).get("csrf_token")
    if token and request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(
            CSRF_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
            path="/",
        )


def check_csrf(request: Request, submitted: str | None) -> None:
    """Refuse a form whose CSRF field does not match this browser's cookie."""
    expected = request.cookies.get(CSRF_COOKIE)
    # Bytes: compare_digest refuses non-ASCII str, and the field is whatever the client sent.
    if (
        not expected
        or not submitted
        or not secrets.compare_digest(expected.encode(), submitted.encode())
    ):
        raise CsrfFailed()
