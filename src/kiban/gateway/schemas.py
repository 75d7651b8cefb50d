"""Request and response bodies of the ``/ai`` routes (``/v1`` speaks OpenAI's own JSON)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kiban.usage import UsageEntry

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
