"""Request and response bodies of the ``/ai`` routes (``/v1`` speaks OpenAI's own JSON)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer

MAX_PROMPT_CHARS = 100_000


class AskRequest(BaseModel):
    """A question for ``POST /ai/test`` and ``POST /ai/stream``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="The question.")
    model: str | None = Field(
        default=None, max_length=128, description="Default: KIBAN_DEFAULT_MODEL."
    )
    grounded: bool = Field(default=True, description="Answer from your documents only.")
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)


class TokenCounts(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Source(BaseModel):
    document_id: str
    filename: str
    chunk_id: int
    score: float
    snippet: str


class AskResponse(BaseModel):
    """The answer of ``POST /ai/test``."""

    result: str
    request_id: str
    model: str
    usage: TokenCounts
    estimated_cost: str | None = Field(
        description="Exact USD as a decimal string; null when the model has no price."
    )
    response_time_ms: float
    sources: list[Source]
    status: str = Field(description="ok, or no_context when nothing relevant was found.")
    finish_reason: str | None = None


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
    estimated_cost: Decimal | None
    response_time_ms: float
    time_to_first_token_ms: float | None
    source_ids: list[Any] | None

    @field_serializer("estimated_cost")
    def _exact(self, value: Decimal | None) -> str | None:
        # The column keeps 10 decimal places; show the exact value without padding ("0.00042").
        return None if value is None else format(value.normalize(), "f")


class LogEntry(UsageEntry):
    """A record of one's own, with the texts the content policy kept."""

    prompt_text: str | None
    response_text: str | None


class LogPage(BaseModel):
    """A page of ledger records, newest first."""

    items: list[LogEntry]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )
