"""Quota state: one row per user and quota period, the reservations in flight against it, and
the reservations already settled.

Token and cost counters live in ``quota_periods``; the per-user rate-limit window rides on the
same row so that one conditional UPDATE checks and takes both. Costs are integer nano-USD
(1e-9 USD) so that arithmetic inside SQL is exact on SQLite and PostgreSQL alike.

A user's plan (set by an admin until billing decides it) is ``users.plan``; extra tokens granted
by an admin for one period are ``quota_periods.extra_tokens``.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core import clock
from kiban.models.base import Base, BigIntPK


class QuotaPeriod(Base):
    """What one user used, holds reserved and was granted in one quota period."""

    __tablename__ = "quota_periods"
    __table_args__ = (UniqueConstraint("user_id", "period_start"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    used_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    extra_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    used_cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    # Fixed one-minute rate-limit window: its start (epoch minute), requests and tokens in it.
    window_start: Mapped[int] = mapped_column(BigInteger, default=0)
    window_requests: Mapped[int] = mapped_column(Integer, default=0)
    window_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now)


class QuotaReservation(Base):
    """Tokens (and cost) held for one request in flight; released by settle or by expiry."""

    __tablename__ = "quota_reservations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    period_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("quota_periods.id", ondelete="CASCADE"), index=True
    )
    tokens: Mapped[int] = mapped_column(BigInteger)
    cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)


class QuotaSettlement(Base):
    """A reservation already settled: what makes settling it again (a retry) a no-op.

    Written in the same transaction as the usage it settles, so a settle whose acknowledgement
    was lost can be retried safely. Kept a day (``SETTLEMENT_RETENTION``), far longer than any
    retry, then purged by the expiry sweeper.
    """

    __tablename__ = "quota_settlements"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)  # the reservation's id
    created_at: Mapped[datetime] = mapped_column(index=True)


class ApiKeyLimit(Base):
    """Rate limits set on one API key (on top of its user's plan), with the key's own window.

    A key without a row has no limits of its own. ``last_refused`` is written by the same
    statement that checks and takes the window, so that one UPDATE says whether it was allowed.
    Deleting a key deletes its limits.
    """

    __tablename__ = "api_key_limits"

    api_key_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)
    tokens_per_minute: Mapped[int | None] = mapped_column(BigInteger, default=None)
    window_start: Mapped[int] = mapped_column(BigInteger, default=0)
    window_requests: Mapped[int] = mapped_column(Integer, default=0)
    window_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    last_refused: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now)
