"""HTTP routes of /auth: accounts, tokens, API keys."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from kiban.auth import api_keys, refresh, service
from kiban.auth import exceptions as exc
from kiban.auth.dependencies import (
    CurrentUser,
    KeyRingDep,
    TokenUser,
)
from kiban.auth.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    PasswordChange,
    RefreshRequest,
    RegisterRequest,
    TokenPair,
    UserOut,
)
from kiban.core.db import SessionDep
from kiban.core.dependencies import SessionmakerDep, SettingsDep

router = APIRouter(prefix="/auth", tags=["auth"])


def _token_pair(response: Response, issued: service.IssuedTokens) -> TokenPair:
    # RFC 6749 §5.1: responses carrying tokens must not be cached.
    response.headers["Cache-Control"] = "no-store"
    return TokenPair(
        access_token=issued.access_token,
        refresh_token=issued.refresh_token,
        expires_in=issued.expires_in,
    )


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=UserOut)
async def register(body: RegisterRequest, session: SessionDep) -> UserOut:
    """Create an account (email normalized to lowercase; 409 email_taken if it exists)."""
    user = await service.create_user(session, body.email, body.password)
    return UserOut.model_validate(user)


@router.post("/token", response_model=TokenPair)
async def token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    request: Request,
    response: Response,
    session: SessionDep,
    sessionmaker: SessionmakerDep,
    keyring: KeyRingDep,
    settings: SettingsDep,
) -> TokenPair:
    """Sign in with email (as `username`) and password: an access and a refresh token."""
    issued = await service.sign_in(
        session,
        sessionmaker,
        keyring,
        settings,
        email=form.username,
        password=form.password,
        address=request.client.host if request.client else "unknown",
    )
    return _token_pair(response, issued)


@router.post("/refresh", response_model=TokenPair)
async def refresh_token(
    body: RefreshRequest,
    response: Response,
    session: SessionDep,
    keyring: KeyRingDep,
    settings: SettingsDep,
) -> TokenPair:
    """Spend a refresh token for a new pair; the old one stops working (rotation)."""
    try:
        issued = await service.refresh_tokens(session, keyring, settings, body.refresh_token)
    except refresh.FamilyRevoked:
        await session.commit()  # the family's revocation must outlive this 401
        raise
    return _token_pair(response, issued)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(body: RefreshRequest, session: SessionDep) -> None:
    """Revoke the sign-in the refresh token belongs to (idempotent)."""
    await refresh.logout(session, body.refresh_token)


@router.get("/me", response_model=UserOut)
async def me(user: CurrentUser) -> UserOut:
    """The signed-in user (access token or API key)."""
    return UserOut.model_validate(user)


@router.post("/password", status_code=status.HTTP_204_NO_CONTENT)
async def change_password(body: PasswordChange, user: TokenUser, session: SessionDep) -> None:
    """Change the password; every refresh token of the account is revoked (access token only)."""
    await service.change_password(session, user, body.current_password, body.new_password)


@router.post("/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
async def create_api_key(body: ApiKeyCreate, user: TokenUser, session: SessionDep) -> ApiKeyCreated:
    """Create an API key; the key is in this response only (access token only)."""
    created = await api_keys.create_api_key(session, user, body.name)
    out = ApiKeyOut.model_validate(created.record)
    return ApiKeyCreated(**out.model_dump(), key=created.plaintext)


@router.get("/api-keys", response_model=list[ApiKeyOut])
async def list_api_keys(user: TokenUser, session: SessionDep) -> list[ApiKeyOut]:
    """Your active API keys: prefix, name, created, last used (access token only)."""
    return [ApiKeyOut.model_validate(k) for k in await api_keys.list_api_keys(session, user)]


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(key_id: uuid.UUID, user: TokenUser, session: SessionDep) -> None:
    """Revoke an API key at once (access token only)."""
    if not await api_keys.revoke_api_key(session, user, key_id):
        raise exc.ApiKeyNotFound()
