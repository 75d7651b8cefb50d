"""Rollups of the usage ledger for admin analytics (decision 0055).

Written in the same transaction as the ledger rows they count (``kiban.usage.rollups.add``), so
they never disagree with the ledger. Only additive figures live here: counts, sums, and
histograms of latency and time to first token, which narrow an exact percentile down to the few
ledger values of one histogram bin (``kiban.usage.histograms``). Key columns are NOT NULL so an
upsert always finds its row: a NULL plan is stored as ``''``, an anonymous record's user as the
nil UUID.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from kiban.models.base import Base

NO_PLAN = ""
NO_USER = uuid.UUID(int=0)


class UsageRollupHourly(Base):
    """Ledger figures per UTC hour, model, endpoint, status and plan."""

    __tablename__ = "usage_rollups_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    plan: Mapped[str] = mapped_column(String(64), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_units: Mapped[int] = mapped_column(BigInteger)  # exact, in 1e-10 USD
    unpriced: Mapped[int] = mapped_column(BigInteger)  # records with tokens and no price


class UsageRollupUserDaily(Base):
    """Ledger figures per UTC day and user (top users)."""

    __tablename__ = "usage_rollups_user_daily"

    day: Mapped[datetime] = mapped_column(primary_key=True)
    # No foreign key: a deleted user's figures stay; readers join users (a missing user counts
    # as no user, as the ledger's ``ON DELETE SET NULL`` does).
    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_units: Mapped[int] = mapped_column(BigInteger)


class UsageHistogramHourly(Base):
    """How many ledger values fell in each bin per UTC hour: latency (every record except
    rejected ones) and time to first token (those that have one). Bins are fixed
    (``kiban.usage.bins.EDGES``)."""

    __tablename__ = "usage_histograms_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    metric: Mapped[str] = mapped_column(String(16), primary_key=True)  # "latency" | "ttft"
    bin: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class UsageHistogramDaily(Base):
    """The same counts per UTC day: a month's window reads 30 days of bins, not 720 hours."""

    __tablename__ = "usage_histograms_daily"

    day: Mapped[datetime] = mapped_column(primary_key=True)
    metric: Mapped[str] = mapped_column(String(16), primary_key=True)
    bin: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
