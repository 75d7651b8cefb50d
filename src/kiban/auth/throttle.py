"""Sign-in throttling per account and per client address, shared by every process via the database.

Each attempt is recorded (in its own committed transaction) BEFORE the password is checked, then
counted: an attempt goes ahead only if the attempts in the window, its own included, are within the
limits. So N concurrent guesses, in one process or many, cannot all slip past the check before any
failure is written; at most ``login_max_failures`` are ever in flight or failed per window. A
success deletes the account's attempts; a failure leaves its row as the failure record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kiban.auth import exceptions as exc
from kiban.core import clock
from kiban.core.db import session_scope
from kiban.models import LoginAttempt
from kiban.settings import Settings


@dataclass(frozen=True)
class Attempt:
    id: int
    email: str
    address: str


async def begin_attempt(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, email: str, address: str
) -> Attempt:
    """Record a sign-in attempt, or raise ``TooManyAttempts`` (with Retry-After) over the limits."""
    now = clock.now()
    window_start = now - timedelta(seconds=settings.login_failure_window_seconds)
    address = address[:64]
    async with session_scope(sessionmaker) as session:
        # Old rows are useless; deleting them here keeps the table as small as the window.
        await session.execute(delete(LoginAttempt).where(LoginAttempt.created_at < window_start))
        row = LoginAttempt(email=email, address=address, created_at=now)
        session.add(row)
        await session.flush()
        attempt = Attempt(row.id, email, address)
    retry_after = await _over_limit(sessionmaker, settings, attempt, window_start, now)
    if retry_after is not None:
        await discard_attempt(sessionmaker, attempt)
        raise exc.TooManyAttempts(retry_after)
    return attempt


async def _over_limit(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    attempt: Attempt,
    window_start: datetime,
    now: datetime,
) -> int | None:
    """Seconds to wait if the attempts in the window, this one included, exceed a limit."""
    async with sessionmaker() as session:
        for column, value, limit in (
            (LoginAttempt.email, attempt.email, settings.login_max_failures),
            (LoginAttempt.address, attempt.address, settings.login_max_failures_per_address),
        ):
            count, oldest = (
                await session.execute(
                    select(func.count(), func.min(LoginAttempt.created_at)).where(
                        column == value, LoginAttempt.created_at >= window_start
                    )
                )
            ).one()
            if count > limit:
                retry = oldest + timedelta(seconds=settings.login_failure_window_seconds) - now
                return max(1, math.ceil(retry.total_seconds()))
    return None


async def discard_attempt(sessionmaker: async_sessionmaker[AsyncSession], attempt: Attempt) -> None:
    """Forget one attempt (it was refused before the password was checked)."""
    async with session_scope(sessionmaker) as session:
        await session.execute(delete(LoginAttempt).where(LoginAttempt.id == attempt.id))


async def succeed_attempt(sessionmaker: async_sessionmaker[AsyncSession], attempt: Attempt) -> None:
    """The password was right: the account's failures are forgiven (the address's are not)."""
    async with session_scope(sessionmaker) as session:
        await session.execute(
            delete(LoginAttempt).where(
                (LoginAttempt.id == attempt.id) | (LoginAttempt.email == attempt.email)
            )
        )
