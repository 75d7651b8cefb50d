"""The ledger record as the API shows it, shared by ``/ai/logs`` and the admin usage log."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, field_serializer


class UsageEntry(BaseModel):
    """One usage-ledger record: the fields every view of the ledger shows (``/ai/logs``, the
    admin usage log and its dashboard table)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    request_id: str
    created_at: datetime
    user_id: uuid.UUID | None
    api_key_id: uuid.UUID | None
    plan: str | None
    endpoint: str
    model: str
    provider: str
    streamed: bool
    status: str
    error_code: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    deployment: str | None  # the deployment that served it (or was tried last); None: no upstream
    attempts: int  # upstream attempts, across retries, failovers and fallback models
    cache_write_tokens: int = 0
    estimated_cost: Decimal | None
    response_time_ms: float
    time_to_first_token_ms: float | None
    source_ids: list[Any] | None

    @field_serializer("estimated_cost")
    def _exact(self, value: Decimal | None) -> str | None:
        # The column keeps 10 decimal places; show the exact value without padding ("0.00042").
        return None if value is None else format(value.normalize(), "f")
