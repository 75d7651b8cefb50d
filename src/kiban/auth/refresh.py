"""Refresh tokens: opaque, stored as SHA-256, rotated on every use, revoked by family on reuse.

A sign-in starts a family. ``rotate`` revokes the presented token with a conditional UPDATE
(``… WHERE revoked_at IS NULL``) and issues its successor only if that UPDATE changed a row, so two
concurrent refreshes with the same token cannot both succeed. The loser, like anyone presenting
an already-rotated token, is treated as a thief: the whole family is revoked, which signs out
both the attacker and the victim (who signs in again). That revocation must survive the 401, so
``rotate`` raises ``FamilyRevoked``, which the router commits before it answers.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.auth import exceptions as exc
from kiban.core import clock
from kiban.models import RefreshToken, User
from kiban.settings import Settings

ROTATED = "rotated"
REUSE_DETECTED = "reuse_detected"
LOGOUT = "logout"
PASSWORD_CHANGED = "password_changed"  # noqa: S105 (a reason, not a password)
DEACTIVATED = "deactivated"
# Expired tokens are deleted when their user is next issued one, once they are this old (until
# then, presenting one says "expired" rather than "not known"). Rotation adds a row per refresh,
# so without this the table grows with every client's every refresh, forever.
EXPIRED_KEPT = timedelta(days=7)


class FamilyRevoked(exc.TokenRevoked):
    """A rotated token was presented again; its family has just been revoked (commit it)."""

    default_message = "This refresh token was already used; every session it belongs to is revoked."
    default_hint = (
        "A refresh token works once. Presenting it twice looks like theft, so all tokens of this "
        "sign-in were revoked: sign in again. Clients must store the new refresh token each time."
    )


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# A recognizable prefix; it also keeps a token from starting with "-", which a command line (e.g.
# `kiban token explain TOKEN`) would read as an option. Tokens of a dashboard (cookie) sign-in
# say so: only they get the browser tabs' reuse interval. The prefix is part of what is hashed,
# so an API client's token cannot be passed off as a browser's.
REFRESH_TOKEN_PREFIX = "kbr_"  # noqa: S105 (a prefix, not a secret)
WEB_REFRESH_TOKEN_PREFIX = "kbw_"  # noqa: S105
# Reasons that end a whole sign-in: a token of a family holding one is refused even if it was
# issued after the revocation (a successor racing it), so a revoked family stays revoked.
FAMILY_ENDED = (REUSE_DETECTED, LOGOUT, PASSWORD_CHANGED, DEACTIVATED)


async def issue(
    session: AsyncSession,
    settings: Settings,
    user: User,
    family_id: uuid.UUID | None = None,
    *,
    web: bool = False,
) -> str:
    """A new refresh token for the user, in a new family unless one is given (``web``: for a
    dashboard sign-in's cookie)."""
    await session.execute(
        delete(RefreshToken).where(
            RefreshToken.user_id == user.id, RefreshToken.expires_at < clock.now() - EXPIRED_KEPT
        )
    )
    prefix = WEB_REFRESH_TOKEN_PREFIX if web else REFRESH_TOKEN_PREFIX
    token = prefix + secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            user_id=user.id,
            family_id=family_id or uuid.uuid4(),
            token_hash=hash_refresh_token(token),
            expires_at=clock.now() + timedelta(seconds=settings.refresh_token_ttl_seconds),
        )
    )
    await session.flush()
    return token


async def find(session: AsyncSession, token: str) -> RefreshToken | None:
    """The stored record of a refresh token, whatever its state."""
    return await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(token))
    )


async def rotate(
    session: AsyncSession,
    settings: Settings,
    token: str,
    *,
    reuse_grace: timedelta = timedelta(0),
) -> tuple[User, str]:
    """Spend a refresh token: its user and the next token of its family.

    ``reuse_grace`` (the dashboard's cookies): a token of a dashboard sign-in rotated less than
    this long ago, in a family that is still live, is given another successor instead of being
    taken for a stolen copy. Two browser tabs renewing the same cookie at once do exactly that.
    API clients' tokens never get it.
    """
    web = token.startswith(WEB_REFRESH_TOKEN_PREFIX)
    if not web:
        reuse_grace = timedelta(0)
    record = await find(session, token)
    if record is None:
        raise exc.TokenRevoked(
            "This refresh token is not known: it was never issued here, or it expired long ago."
        )
    if record.revoked_at is not None:
        if record.revoked_reason == ROTATED:
            if await _racing(session, record, reuse_grace):
                return await _successor(session, settings, record)
            await revoke_family(session, record.family_id, REUSE_DETECTED)
            raise FamilyRevoked()
        raise exc.TokenRevoked(f"This refresh token was revoked ({record.revoked_reason}).")
    if record.expires_at <= clock.now():
        raise exc.TokenExpired("The refresh token has expired.", hint="Sign in again.")
    ended = await _family_ended(session, record.family_id)
    if ended is not None:
        # Issued while its family was being revoked (a successor racing a logout or a replay).
        await revoke_family(session, record.family_id, ended)
        raise FamilyRevoked(f"This refresh token was revoked ({ended}).", hint="Sign in again.")
    user = await _active_user(session, record)
    spent = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == record.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=clock.now(), revoked_reason=ROTATED)
        .execution_options(synchronize_session=False)
    )
    if getattr(spent, "rowcount", 0) != 1:
        # Another request spent it between our read and our write: the same token twice.
        if reuse_grace > timedelta(0) and await _family_live(session, record.family_id):
            return user, await issue(session, settings, user, record.family_id, web=web)
        await revoke_family(session, record.family_id, REUSE_DETECTED)
        raise FamilyRevoked()
    return user, await issue(session, settings, user, record.family_id, web=web)


async def _racing(session: AsyncSession, record: RefreshToken, grace: timedelta) -> bool:
    """Whether a rotated token is presented again within the grace, its family still live."""
    rotated_at = record.revoked_at
    if grace <= timedelta(0) or rotated_at is None or rotated_at <= clock.now() - grace:
        return False
    return await _family_live(session, record.family_id)


async def _family_live(session: AsyncSession, family_id: uuid.UUID) -> bool:
    live = select(RefreshToken.id).where(
        RefreshToken.family_id == family_id,
        RefreshToken.revoked_at.is_(None),
        RefreshToken.expires_at > clock.now(),
    )
    return await session.scalar(live.limit(1)) is not None


async def _successor(
    session: AsyncSession, settings: Settings, record: RefreshToken
) -> tuple[User, str]:
    user = await _active_user(session, record)
    return user, await issue(session, settings, user, record.family_id, web=True)


async def _family_ended(session: AsyncSession, family_id: uuid.UUID) -> str | None:
    """Why the family was revoked as a whole (logout, replay, ...), or None."""
    ended = select(RefreshToken.revoked_reason).where(
        RefreshToken.family_id == family_id, RefreshToken.revoked_reason.in_(FAMILY_ENDED)
    )
    return await session.scalar(ended.limit(1))


async def _active_user(session: AsyncSession, record: RefreshToken) -> User:
    user = await session.get(User, record.user_id)
    if user is None:
        raise exc.UserNotFound()
    if not user.is_active:
        raise exc.UserInactive()
    return user


async def revoke_family(session: AsyncSession, family_id: uuid.UUID, reason: str) -> int:
    """Revoke every live token of a family; the number revoked."""
    return await _revoke(session, RefreshToken.family_id == family_id, reason)


async def revoke_user(session: AsyncSession, user_id: uuid.UUID, reason: str) -> int:
    """Revoke every live refresh token of a user (password change, deactivation)."""
    return await _revoke(session, RefreshToken.user_id == user_id, reason)


async def _revoke(session: AsyncSession, which: ColumnElement[bool], reason: str) -> int:
    result = await session.execute(
        update(RefreshToken)
        .where(which, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=clock.now(), revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0))


async def logout(session: AsyncSession, token: str) -> None:
    """Revoke the sign-in (the family) the token belongs to; unknown tokens are ignored."""
    record = await find(session, token)
    if record is not None:
        await revoke_family(session, record.family_id, LOGOUT)
