"""Who is calling: `CurrentPrincipal`, `GatewayPrincipal` (and `GatewayKeyPrincipal`, which also
reads `x-api-key`), `CurrentUser`, `AdminUser`, `TokenUser` and `KeyRingDep`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from kiban.auth import exceptions as exc
from kiban.auth.api_keys import authenticate_api_key, looks_like_api_key
from kiban.auth.key_cache import ApiKeyCache
from kiban.auth.keys import KeyRing
from kiban.auth.verify import verify_access_token
from kiban.core.db import SessionDep
from kiban.core.dependencies import SessionmakerDep, SettingsDep
from kiban.models import User


async def get_keyring(request: Request) -> KeyRing:
    keyring: KeyRing = request.app.state.keyring
    return keyring


async def get_key_cache(request: Request) -> ApiKeyCache:
    cache: ApiKeyCache = request.app.state.api_key_cache
    return cache


# Read from app.state: `async def` so FastAPI calls it inline, not through its thread pool.
KeyRingDep = Annotated[KeyRing, Depends(get_keyring)]
KeyCacheDep = Annotated[ApiKeyCache, Depends(get_key_cache)]

# Declares the scheme in OpenAPI so Swagger's Authorize button signs in through /auth/token; it
# never raises itself (auto_error=False): ``bearer_credentials`` below says precisely what is wrong.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user, and the API key used, if any."""

    user: User
    api_key_id: uuid.UUID | None = None
    # False: the user had no subscription that could grant paid access when authenticated, so
    # the entitlement need not look one up; None: not known (ask billing).
    may_be_subscribed: bool | None = None
    # False: the API key has no rate limits of its own (the admission skips the key window).
    key_has_limits: bool | None = None

    @property
    def via_api_key(self) -> bool:
        return self.api_key_id is not None


async def bearer_credentials(
    request: Request, _scheme: Annotated[str | None, Depends(oauth2_scheme)] = None
) -> str:
    """The bearer credential of the request, or a 401 saying what is wrong with the header."""
    header = request.headers.get("authorization")
    if not header:
        raise exc.MissingCredentials()
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise exc.MalformedToken(
            "The Authorization header must be 'Bearer <token>'.",
        )
    return credentials.strip()


async def get_principal(
    request: Request,
    token: Annotated[str, Depends(bearer_credentials)],
    session: SessionDep,
    settings: SettingsDep,
    keyring: KeyRingDep,
    sessionmaker: SessionmakerDep,
    key_cache: KeyCacheDep,
) -> Principal:
    """Authenticate the request by access token (JWT) or API key (``kb_…``)."""
    if looks_like_api_key(token):
        found_key = await authenticate_api_key(session, sessionmaker, token, key_cache)
        principal = Principal(
            user=found_key.user,
            api_key_id=found_key.api_key_id,
            may_be_subscribed=found_key.may_be_subscribed,
            key_has_limits=found_key.has_own_limits,
        )
    else:
        claims = verify_access_token(keyring, settings, token)
        found = await session.get(User, claims.sub)
        if found is None:
            raise exc.UserNotFound()
        if not found.is_active:
            raise exc.UserInactive()
        principal = Principal(user=found)
    return _bound(request, principal)


async def get_gateway_principal(
    request: Request, _token: Annotated[str, Depends(bearer_credentials)]
) -> Principal:
    """``get_principal`` for routes with no database work of their own (the AI gateway).

    Declared as a dependency (the OpenAPI schema shows the bearer scheme); the gateway's routes
    call ``authenticate_gateway`` themselves, without FastAPI's per-request dependency solving.
    """
    return await authenticate_gateway(request)


async def authenticate_gateway(request: Request, *, x_api_key: bool = False) -> Principal:
    """The gateway's caller, from the request and the app's start-up state alone (with
    ``x_api_key``, Anthropic's header is read first, then ``Authorization``).

    No request session: an API key the cache holds costs no database work at all, and a miss
    or an access token reads in a short session of its own. The user is detached, and for
    a cached key one instance serves every request: read it, never change it.
    """
    token = await (gateway_credentials(request) if x_api_key else bearer_credentials(request))
    state = request.app.state
    if looks_like_api_key(token):
        found_key = await authenticate_api_key(
            None, state.sessionmaker, token, state.api_key_cache, shared=True
        )
        principal = Principal(
            user=found_key.user,
            api_key_id=found_key.api_key_id,
            may_be_subscribed=found_key.may_be_subscribed,
            key_has_limits=found_key.has_own_limits,
        )
    else:
        claims = verify_access_token(state.keyring, state.settings, token)
        async with state.sessionmaker() as session:
            found = await session.get(User, claims.sub)
        if found is None:
            raise exc.UserNotFound()
        if not found.is_active:
            raise exc.UserInactive()
        principal = Principal(user=found)
    return _bound(request, principal)


async def gateway_credentials(
    request: Request, _scheme: Annotated[str | None, Depends(oauth2_scheme)] = None
) -> str:
    """The key in ``x-api-key`` (where Anthropic's SDKs and Claude Code send it), else the
    bearer credential."""
    key = request.headers.get("x-api-key")
    if key is None:
        if not request.headers.get("authorization"):
            raise exc.MissingCredentials(
                hint="Send 'x-api-key: <kb_ API key>' or 'Authorization: Bearer <token>'."
            )
        return await bearer_credentials(request)
    if not key.strip():
        raise exc.MalformedToken("The x-api-key header is empty.")
    return key.strip()


async def get_gateway_key_principal(
    request: Request, _token: Annotated[str, Depends(gateway_credentials)]
) -> Principal:
    """``get_gateway_principal``, with the credential also read from ``x-api-key``."""
    return await authenticate_gateway(request, x_api_key=True)


def _bound(request: Request, principal: Principal) -> Principal:
    """The principal, with its user and key bound to the request's log line."""
    state = request.scope.setdefault("state", {})
    state["user_id"] = str(principal.user.id)
    if principal.api_key_id is not None:
        state.setdefault("log_fields", {})["api_key_id"] = str(principal.api_key_id)
    return principal


async def get_current_user(principal: Annotated[Principal, Depends(get_principal)]) -> User:
    return principal.user


async def get_admin_user(user: Annotated[User, Depends(get_current_user)]) -> User:
    if not user.is_admin:
        raise exc.RoleRequired("admin")
    return user


async def get_token_user(principal: Annotated[Principal, Depends(get_principal)]) -> User:
    """The user, signed in with an access token: key and password management refuse API keys."""
    if principal.via_api_key:
        raise exc.AccessTokenRequired()
    return principal.user


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
GatewayPrincipal = Annotated[Principal, Depends(get_gateway_principal)]
GatewayKeyPrincipal = Annotated[Principal, Depends(get_gateway_key_principal)]
CurrentUser = Annotated[User, Depends(get_current_user)]
AdminUser = Annotated[User, Depends(get_admin_user)]
TokenUser = Annotated[User, Depends(get_token_user)]
