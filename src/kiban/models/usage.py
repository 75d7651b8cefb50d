"""The usage ledger: one row for every AI request, whatever happened to it."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Numeric, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core import clock
from kiban.models.base import Base, BigIntPK


class UsageStatus(StrEnum):
    OK = "ok"
    NO_CONTEXT = "no_context"  # grounded request with nothing relevant: answered without a model
    ERROR = "error"
    CANCELLED = "cancelled"  # the client went away mid-stream
    REJECTED = "rejected"  # refused before any provider call (quota, rate limit, plan)


class UsageRecord(Base):
    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_user_id_created_at", "user_id", "created_at"),
        Index("ix_usage_records_created_at", "created_at"),
        # Admin analytics (migration 0007): a covering index, so a window's summary is an
        # index-only range scan that never reads the wide rows (prompt and response text).
        Index(
            "ix_usage_records_analytics",
            "created_at",
            "status",
            "model",
            "endpoint",
            "plan",
            "user_id",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "estimated_cost",
            "response_time_ms",
            "time_to_first_token_ms",
        ),
        # Exact percentiles (migration 0009): the histogram rollup names the bin that holds a
        # rank, and these fetch that bin's values in a window without reading the window.
        Index("ix_usage_records_latency", "response_time_ms", "created_at", "status"),
        Index("ix_usage_records_ttft", "time_to_first_token_ms", "created_at", "status"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    plan: Mapped[str | None] = mapped_column(String(64), default=None)
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    provider: Mapped[str] = mapped_column(String(64))
    streamed: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    total_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # Prompt tokens read from a cache (OpenAI's cached_tokens, Anthropic's cache_read_input_tokens).
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # The three below have only server defaults: an INSERT built from a record's keys (the settle
    # paths) must leave an absent one to the database, not bind a Python default as NULL.
    # Anthropic's cache_creation_input_tokens (prompt tokens written to its cache, priced apart).
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # The configured deployment that answered (NULL: the built-in engine, or no upstream reached),
    # and how many upstream attempts the call took across retries and failovers.
    deployment: Mapped[str | None] = mapped_column(String(64), default=None)
    attempts: Mapped[int] = mapped_column(server_default="0")
    # Exact decimal USD; NULL when the model has no price (never a silent 0).
    estimated_cost: Mapped[Decimal | None] = mapped_column(Numeric(20, 10), default=None)
    response_time_ms: Mapped[float] = mapped_column(default=0.0)
    time_to_first_token_ms: Mapped[float | None] = mapped_column(default=None)
    source_ids: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    # Kept according to the content policy (full, truncated, none).
    prompt_text: Mapped[str | None] = mapped_column(Text, default=None)
    response_text: Mapped[str | None] = mapped_column(Text, default=None)
