"""Shapes of the usage and API key limit endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from kiban.billing import DocumentLimits


class PlanOut(BaseModel):
    name: str
    display_name: str
    monthly_tokens: int
    monthly_cost_usd: Decimal | None
    requests_per_minute: int
    tokens_per_minute: int | None
    models: list[str]
    max_tokens: int
    max_prompt_tokens: int
    documents: DocumentLimits


class PeriodOut(BaseModel):
    start: datetime
    end: datetime
    resets_in_seconds: int
    source: str  # default | admin | subscription: what decided the plan


class TokensOut(BaseModel):
    limit: int  # plan allowance + extra
    plan_allowance: int
    extra: int  # granted by an admin for this period
    used: int
    reserved: int  # held by requests in flight
    remaining: int


class CostOut(BaseModel):
    limit_usd: Decimal | None
    used_usd: Decimal
    reserved_usd: Decimal
    remaining_usd: Decimal | None


class RateLimitOut(BaseModel):
    requests_per_minute: int
    requests_remaining: int
    tokens_per_minute: int | None
    tokens_remaining: int | None
    resets_in_seconds: int


class UsageReport(BaseModel):
    user_id: uuid.UUID
    plan: PlanOut
    period: PeriodOut
    tokens: TokensOut
    cost: CostOut
    rate_limit: RateLimitOut


class KeyLimitsIn(BaseModel):
    """Limits of one API key; both null removes them (the key then shares its user's limits)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1, le=10**9)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=10**15)


class KeyLimitsOut(BaseModel):
    api_key_id: uuid.UUID
    requests_per_minute: int | None
    tokens_per_minute: int | None
