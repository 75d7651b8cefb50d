"""Accounts and sign-in: register, password sign-in (throttled), refresh, password change."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kiban.auth import exceptions as exc
from kiban.auth import refresh, throttle
from kiban.auth.keys import KeyRing
from kiban.auth.passwords import DUMMY_HASH, hash_password, verify_password
from kiban.auth.schemas import normalize_email
from kiban.auth.verify import issue_access_token
from kiban.core import clock
from kiban.models import Role, User
from kiban.settings import Settings


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    expires_in: int


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    """The user with this email (normalized), if any."""
    return await session.scalar(select(User).where(User.email == normalize_email(email)))


async def create_user(
    session: AsyncSession, email: str, password: str, role: Role = Role.USER
) -> User:
    """A new account; ``EmailTaken`` when the (normalized) email is in use."""
    email = normalize_email(email)
    if await get_user_by_email(session, email) is not None:
        raise exc.EmailTaken()
    # Argon2 is deliberately slow: keep it off the event loop.
    password_hash = await asyncio.to_thread(hash_password, password)
    user = User(email=email, password_hash=password_hash, role=role)
    try:
        async with session.begin_nested():
            session.add(user)
            await session.flush()
    except IntegrityError as e:  # a concurrent registration won the race
        raise exc.EmailTaken() from e
    return user


async def sign_in(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    keyring: KeyRing,
    settings: Settings,
    *,
    email: str,
    password: str,
    address: str,
    web: bool = False,
) -> IssuedTokens:
    """Tokens for a correct email and password; the same error for every wrong combination.

    ``web``: the dashboard's cookie sign-in (its refresh tokens get the tabs' reuse interval).
    """
    email = normalize_email(email)[:320]
    attempt = await throttle.begin_attempt(sessionmaker, settings, email, address)
    # Read the hash in a short session of its own: the request's session takes a connection only
    # after the last throttle write, so a burst of sign-ins never holds two connections each
    # (which could exhaust the pool and stall every one of them).
    async with sessionmaker() as lookup:
        found = await lookup.execute(select(User.id, User.password_hash).where(User.email == email))
        row = found.first()
    # Verify against a dummy hash for unknown emails so the answer takes as long either way.
    valid = await asyncio.to_thread(
        verify_password, password, row.password_hash if row else DUMMY_HASH
    )
    if row is None or not valid:
        raise exc.InvalidCredentials()
    await throttle.succeed_attempt(sessionmaker, attempt)
    user = await session.get(User, row.id)
    if user is None:  # deleted in the meantime
        raise exc.InvalidCredentials()
    if not user.is_active:
        raise exc.UserInactive()
    user.last_login_at = clock.now()
    return await issue_tokens(session, keyring, settings, user, web=web)


async def issue_tokens(
    session: AsyncSession, keyring: KeyRing, settings: Settings, user: User, *, web: bool = False
) -> IssuedTokens:
    """A fresh access token and the first refresh token of a new family."""
    refresh_token = await refresh.issue(session, settings, user, web=web)
    return IssuedTokens(
        access_token=issue_access_token(keyring, settings, user.id),
        refresh_token=refresh_token,
        expires_in=settings.access_token_ttl_seconds,
    )


async def refresh_tokens(
    session: AsyncSession,
    keyring: KeyRing,
    settings: Settings,
    token: str,
    *,
    reuse_grace: timedelta = timedelta(0),
) -> IssuedTokens:
    """Spend a refresh token for a new pair (rotation; see ``kiban.auth.refresh``)."""
    user, next_refresh = await refresh.rotate(session, settings, token, reuse_grace=reuse_grace)
    return IssuedTokens(
        access_token=issue_access_token(keyring, settings, user.id),
        refresh_token=next_refresh,
        expires_in=settings.access_token_ttl_seconds,
    )


async def change_password(
    session: AsyncSession, user: User, current_password: str, new_password: str
) -> int:
    """Set a new password and revoke every refresh token; the number revoked."""
    if not await asyncio.to_thread(verify_password, current_password, user.password_hash):
        raise exc.WrongPassword()
    user.password_hash = await asyncio.to_thread(hash_password, new_password)
    await session.flush()
    return await refresh.revoke_user(session, user.id, refresh.PASSWORD_CHANGED)
