"""API keys: ``kb_<lookup_id>_<secret>``, stored as a SHA-256, found by one indexed lookup.

The key carries 256 bits of randomness, so a fast hash is the right one: nobody can guess a
preimage, and the gateway's hot path pays for one SHA-256 and, unless the process's cache holds
the key (``kiban.auth.key_cache``), one indexed read; never for Argon2. ``last_used_at`` is
written at most once a minute per key, in a short transaction of its own, off the request path,
so a busy key does not turn every request into a write.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import structlog
from sqlalchemy import Select, bindparam, exists, func, or_, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import make_transient_to_detached

from kiban.auth import exceptions as exc
from kiban.auth.key_cache import ApiKeyCache, CachedKey
from kiban.core import clock
from kiban.core.db import session_scope
from kiban.models import ApiKey, ApiKeyLimit, AuthEpoch, User
from kiban.models.billing import paid_access_until

API_KEY_PREFIX = "kb_"
LOOKUP_ID_LENGTH = 12
LAST_USED_RESOLUTION = timedelta(seconds=60)
log = structlog.get_logger("kiban.auth")
_pending: set[asyncio.Task[None]] = set()
_touching: set[uuid.UUID] = set()
KEY_SHAPE = re.compile(rf"^kb_([0-9a-f]{{{LOOKUP_ID_LENGTH}}})_([A-Za-z0-9_-]{{32,128}})$")


@dataclass(frozen=True)
class NewApiKey:
    """A freshly created key: ``plaintext`` is shown once and never stored."""

    record: ApiKey
    plaintext: str


def looks_like_api_key(credential: str) -> bool:
    """Whether a bearer credential is meant as an API key (rather than a JWT)."""
    return credential.startswith(API_KEY_PREFIX)


def hash_api_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate_api_key() -> tuple[str, str]:
    """A new key's (lookup_id, plaintext)."""
    lookup_id = secrets.token_hex(LOOKUP_ID_LENGTH // 2)
    return lookup_id, f"{API_KEY_PREFIX}{lookup_id}_{secrets.token_urlsafe(32)}"


async def create_api_key(session: AsyncSession, user: User, name: str) -> NewApiKey:
    """Create a key for the user; the plaintext is returned once."""
    lookup_id, plaintext = generate_api_key()
    record = ApiKey(
        user_id=user.id, name=name, lookup_id=lookup_id, key_hash=hash_api_key(plaintext)
    )
    session.add(record)
    await session.flush()
    return NewApiKey(record=record, plaintext=plaintext)


async def list_api_keys(session: AsyncSession, user: User) -> list[ApiKey]:
    """The user's keys that are not revoked, newest first."""
    rows = await session.scalars(
        select(ApiKey)
        .where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        .order_by(ApiKey.created_at.desc())
    )
    return list(rows)


async def revoke_api_key(session: AsyncSession, user: User, key_id: uuid.UUID) -> bool:
    """Revoke one of the user's keys; False when the user has no such live key."""
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=clock.now())
    )
    return bool(getattr(result, "rowcount", 0))


class KeyMatch(NamedTuple):
    """An authenticated key, its user, and what the quota admission may skip for them."""

    api_key_id: uuid.UUID
    # Detached: built from the values read (or cached) for this request; with ``shared`` one
    # instance per cached key, which the caller must only read.
    user: User
    may_be_subscribed: bool  # False: no subscription that could grant paid access right now
    has_own_limits: bool  # False: the key has no rate limits of its own (no api_key_limits row)


_USER_COLUMNS = tuple((attr.key, attr.columns[0]) for attr in sa_inspect(User).column_attrs)


@functools.cache
def _lookup_statement() -> Select[Any]:
    # Built once: constructing the statement on every request cost more CPU than running it.
    # Everything the principal depends on rides on this one round trip: the key, its user's
    # columns, the paid-access bound and whether the key has limits (so that the quota admission
    # can skip billing's query and the key-window statement when they cannot matter: a free
    # user, a key without limits, most AI requests), and the change counter the read saw (so
    # that the cache knows whether the read is recent enough to keep).
    return (
        select(
            ApiKey.id,
            ApiKey.key_hash,
            ApiKey.revoked_at,
            ApiKey.last_used_at,
            *(column.label(f"user_{key}") for key, column in _USER_COLUMNS),
            paid_access_until(User.id).label("paid_access_until"),
            exists().where(ApiKeyLimit.api_key_id == ApiKey.id).label("has_own_limits"),
            func.coalesce(
                select(AuthEpoch.value).where(AuthEpoch.id == 1).scalar_subquery(), 0
            ).label("epoch"),
        )
        .join(User, User.id == ApiKey.user_id)
        .where(ApiKey.lookup_id == bindparam("lookup_id"))
    )


async def authenticate_api_key(
    session: AsyncSession | None,
    sessionmaker: async_sessionmaker[AsyncSession],
    plaintext: str,
    cache: ApiKeyCache | None = None,
    *,
    shared: bool = False,
) -> KeyMatch:
    """The key and its user, or ``InvalidApiKey`` / ``UserInactive``.

    From ``cache`` when it holds the key (no database round trip), else one indexed read (in
    ``session``, or without one in a short session of its own), whose result the cache keeps if
    the key is good. Failures are never cached.
    """
    match = KEY_SHAPE.match(plaintext)
    if match is None:
        raise exc.InvalidApiKey("The API key is not well formed (expected kb_<id>_<secret>).")
    key_hash = hash_api_key(plaintext)
    now = clock.now()
    found = None
    if cache is not None:
        asked = cache.now()
        await cache.fresh(asked)  # a stale cache waits for one shared poll, not a read per key
        found = cache.get(key_hash, asked)
    if found is None:
        if session is None:
            async with sessionmaker() as own:
                found, epoch = await _read_key(own, match.group(1), key_hash)
        else:
            found, epoch = await _read_key(session, match.group(1), key_hash)
        if cache is not None:
            cache.put(key_hash, found, epoch)
    found.last_used_at = _schedule_touch(sessionmaker, found.api_key_id, found.last_used_at, now)
    if shared:
        if found.shared_user is None:
            found.shared_user = _detached_user(found.user)
        user = found.shared_user
    else:
        user = _detached_user(found.user)
    return KeyMatch(
        found.api_key_id,
        user,
        found.may_be_subscribed(now),
        found.has_own_limits,
    )


async def _read_key(session: AsyncSession, lookup_id: str, key_hash: str) -> tuple[CachedKey, int]:
    row = (await session.execute(_lookup_statement(), {"lookup_id": lookup_id})).first()
    # Compare even when the key is unknown, so timing does not reveal which lookup ids exist.
    stored = row.key_hash if row is not None else "0" * 64
    matches = hmac.compare_digest(stored, key_hash)
    if row is None or not matches:
        raise exc.InvalidApiKey()
    if row.revoked_at is not None:
        raise exc.InvalidApiKey("The API key has been revoked.")
    values = row._mapping
    user = {key: values[f"user_{key}"] for key, _ in _USER_COLUMNS}
    if not user["is_active"]:
        raise exc.UserInactive()
    found = CachedKey(
        api_key_id=row.id,
        user_id=user["id"],
        user=user,
        paid_access_until=row.paid_access_until,
        has_own_limits=bool(row.has_own_limits),
        last_used_at=row.last_used_at,
    )
    return found, int(row.epoch)


def _detached_user(values: Mapping[str, Any]) -> User:
    # A new object per request, as if loaded and then detached: a handler that changes or adds
    # its user cannot alter what another request (or the cache) holds.
    user = User(**values)
    make_transient_to_detached(user)
    return user


def _schedule_touch(
    sessionmaker: async_sessionmaker[AsyncSession],
    key_id: uuid.UUID,
    last_used_at: datetime | None,
    now: datetime,
) -> datetime | None:
    """Write ``last_used_at`` when a minute has passed; the value to remember from now on."""
    if last_used_at is not None and now - last_used_at < LAST_USED_RESOLUTION:
        return last_used_at
    if key_id in _touching:  # a burst of requests with one key schedules one write
        return last_used_at
    # Off the request path, in its own short transaction: the request's session may stay open for
    # a long AI call (on SQLite a write in it would hold the one write lock all that time), and a
    # second connection taken while the request holds one could exhaust the pool under load.
    _touching.add(key_id)
    task = asyncio.create_task(_touch(sessionmaker, key_id, now))
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    task.add_done_callback(lambda _: _touching.discard(key_id))
    return now


async def _touch(
    sessionmaker: async_sessionmaker[AsyncSession], key_id: uuid.UUID, now: datetime
) -> None:
    threshold = now - LAST_USED_RESOLUTION
    try:
        # The WHERE makes concurrent processes write once per interval between them.
        async with session_scope(sessionmaker) as session:
            await session.execute(
                update(ApiKey)
                .where(
                    ApiKey.id == key_id,
                    or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < threshold),
                )
                .values(last_used_at=now)
            )
    except Exception as e:  # last use is informational: never fail anything over it
        log.warning("api_key_last_used_not_recorded", api_key_id=str(key_id), error=repr(e))


async def wait_for_touches() -> None:
    """Let pending last-used writes finish (app shutdown, tests)."""
    while _pending:
        await asyncio.gather(*_pending, return_exceptions=True)
