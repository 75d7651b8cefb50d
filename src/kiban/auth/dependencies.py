"""Typed dependencies: ``CurrentPrincipal``, ``CurrentUser``, ``AdminUser``, ``KeyRingDep``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from kiban.auth import exceptions as exc
from kiban.auth.keys import KeyRing
from kiban.auth.tokens import verify_access_token
from kiban.core.db import SessionDep
from kiban.models import User
from kiban.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_keyring(request: Request) -> KeyRing:
    keyring: KeyRing = request.app.state.keyring
    return keyring


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
KeyRingDep = Annotated[KeyRing, Depends(get_keyring)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user, and the API key used, if any."""

    user: User
    api_key_id: uuid.UUID | None = None

    @property
    def via_api_key(self) -> bool:
        return self.api_key_id is not None


def bearer_credentials(request: Request) -> str:
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
    request: Request, session: SessionDep, settings: SettingsDep, keyring: KeyRingDep
) -> Principal:
    """Authenticate the request by access token (JWT) or API key."""
    token = bearer_credentials(request)
    claims = verify_access_token(keyring, settings, token)
    user = await session.get(User, claims.sub)
    if user is None:
        raise exc.UserNotFound()
    if not user.is_active:
        raise exc.UserInactive()
    principal = Principal(user=user)
    request.scope.setdefault("state", {})["user_id"] = str(user.id)
    return principal


async def get_current_user(principal: Annotated[Principal, Depends(get_principal)]) -> User:
    return principal.user


async def get_admin_user(user: Annotated[User, Depends(get_current_user)]) -> User:
    if not user.is_admin:
        raise exc.RoleRequired("admin")
    return user


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
CurrentUser = Annotated[User, Depends(get_current_user)]
AdminUser = Annotated[User, Depends(get_admin_user)]
