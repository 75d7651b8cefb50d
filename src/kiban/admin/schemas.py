"""Response shapes of the admin analytics API.

Costs are exact decimals (USD), serialized as strings so no JSON float rounds them. Percentiles
are nearest-rank (see ``kiban.usage.percentiles``) in milliseconds, null when no request counts.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel

from kiban.usage import UsageEntry


class Interval(StrEnum):
    HOUR = "hour"
    DAY = "day"


class GroupBy(StrEnum):
    MODEL = "model"
    ENDPOINT = "endpoint"
    STATUS = "status"
    PLAN = "plan"


class RankBy(StrEnum):
    COST = "cost"
    TOKENS = "tokens"
    REQUESTS = "requests"


class Figures(BaseModel):
    """The figures reported for a window, or for one bucket and group of a time series."""

    requests: int
    by_status: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: Decimal
    unpriced_requests: int  # requests whose model has no price (their cost is unknown, not 0)
    error_rate: float | None
    no_context_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None


class Summary(Figures):
    start: datetime
    end: datetime


class Point(Figures):
    bucket: datetime


class Series(BaseModel):
    group: str | None
    points: list[Point]


class Timeseries(BaseModel):
    start: datetime
    end: datetime
    interval: Interval
    group_by: GroupBy | None
    series: list[Series]


class MixEntry(BaseModel):
    group: str | None
    requests: int
    total_tokens: int
    cost_usd: Decimal


class TopUser(BaseModel):
    user_id: uuid.UUID | None  # None: requests of deleted users
    email: str | None
    requests: int
    total_tokens: int
    cost_usd: Decimal


class TopUsers(BaseModel):
    start: datetime
    end: datetime
    by: RankBy
    users: list[TopUser]


class PlanQuota(BaseModel):
    plan: str
    monthly_tokens: int | None  # None: the plan is no longer in the plans file
    users_with_usage: int  # users who used tokens in their current quota period
    tokens_used: int
    near_limit: int  # users at or above the threshold share of their allowance
    at_limit: int  # users with nothing left
    near_limit_share: float | None  # near_limit / users_with_usage


class QuotaConsumption(BaseModel):
    at: datetime
    threshold: float
    source: str
    plans: list[PlanQuota]


class LogEntry(UsageEntry):
    """A ledger record with its user's email (texts stay out of the admin views)."""

    email: str | None = None


class LogPage(BaseModel):
    entries: list[LogEntry]
    next_before: int | None  # pass as ``before`` for the next (older) page
