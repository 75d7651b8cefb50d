"""Admin fixtures: a seeded usage ledger and plain-Python references for every figure."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from kiban.models import UsageRecord, User
from kiban.usage import rollups

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)
MODELS = ("gpt-4o-mini", "gpt-4o", "extractive")
ENDPOINTS = ("ai_test", "ai_stream", "chat_completions")
STATUS_WEIGHTS = {"ok": 70, "no_context": 8, "error": 8, "cancelled": 4, "rejected": 10}


def make_records(
    n: int, users: Sequence[uuid.UUID | None], *, seed: int = 7, hours: int = 72
) -> list[UsageRecord]:
    """``n`` varied ledger records over ``hours`` hours from T0 (ties and nulls included)."""
    rnd = random.Random(seed)
    records = []
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    for i in range(n):
        status = rnd.choices(statuses, weights)[0]
        model = rnd.choice(MODELS)
        endpoint = rnd.choice(ENDPOINTS)
        rejected = status == "rejected"
        prompt = 0 if rejected else rnd.randint(1, 2000)
        completion = 0 if rejected or status == "no_context" else rnd.randint(0, 800)
        priced = model != "extractive" and not rejected
        cost = (
            (
                Decimal(prompt) * Decimal("0.00000015") + Decimal(completion) * Decimal("0.0000006")
            ).quantize(Decimal("1e-10"))
            if priced
            else None
        )
        # Integer-ish latencies repeat, so percentile ties are exercised.
        latency = float(rnd.choice([rnd.randint(5, 60), round(rnd.lognormvariate(5, 1), 3)]))
        streamed = endpoint == "ai_stream" and not rejected
        records.append(
            UsageRecord(
                request_id=f"req-{seed}-{i}",
                created_at=T0 + timedelta(seconds=rnd.uniform(0, hours * 3600)),
                user_id=rnd.choice(users),
                plan=rnd.choice(["free", "pro", None]),
                endpoint=endpoint,
                model=model,
                provider="extractive" if model == "extractive" else "openai",
                streamed=streamed,
                status=status,
                error_code="upstream_error" if status == "error" else None,
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                estimated_cost=cost,
                response_time_ms=0.0 if rejected else latency,
                time_to_first_token_ms=round(latency / 3, 3) if streamed else None,
                source_ids=[rnd.randint(1, 50)] if status == "ok" and rnd.random() < 0.5 else None,
            )
        )
    return records


async def seed(session: AsyncSession, records: list[UsageRecord]) -> None:
    """Insert ledger records as the ledger writer does: with their rollups, in one transaction."""
    columns = [c.key for c in UsageRecord.__table__.columns if c.key != "id"]
    await rollups.add(session, [{c: getattr(r, c) for c in columns} for r in records])
    session.add_all(records)
    await session.commit()


async def spend(
    session: AsyncSession, user: User, tokens: int, at: datetime, status: str = "ok"
) -> None:
    """One ledger record of ``tokens`` for ``user`` at ``at``, written as the writer does."""
    record = UsageRecord(
        request_id=f"q-{user.id}-{tokens}-{status}-{at.timestamp()}",
        created_at=at,
        user_id=user.id,
        endpoint="ai_test",
        model="gpt-4o-mini",
        provider="openai",
        status=status,
        prompt_tokens=tokens,
        completion_tokens=0,
        total_tokens=tokens,
        response_time_ms=100.0,
    )
    await seed(session, [record])


# --- plain-Python references ------------------------------------------------------------------


def nearest_rank(values: Sequence[float], p: int) -> float | None:
    """The textbook nearest-rank percentile: the ceil(p/100 * n)-th smallest value."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-p * len(ordered) // 100))
    return ordered[rank - 1]


def expected_figures(records: Sequence[UsageRecord]) -> dict[str, Any]:
    n = len(records)
    by_status = {s: sum(1 for r in records if r.status == s) for s in STATUS_WEIGHTS}
    attempted = [r.response_time_ms for r in records if r.status != "rejected"]
    ttft = [
        r.time_to_first_token_ms
        for r in records
        if r.status != "rejected" and r.time_to_first_token_ms is not None
    ]
    prompt = sum(r.prompt_tokens for r in records)
    completion = sum(r.completion_tokens for r in records)
    return {
        "requests": n,
        "by_status": by_status,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": sum(
            (r.estimated_cost for r in records if r.estimated_cost is not None), Decimal(0)
        ),
        "unpriced_requests": sum(
            1 for r in records if r.estimated_cost is None and r.total_tokens > 0
        ),
        "error_rate": by_status["error"] / n if n else None,
        "no_context_rate": by_status["no_context"] / n if n else None,
        "latency_p50_ms": nearest_rank(attempted, 50),
        "latency_p95_ms": nearest_rank(attempted, 95),
        "latency_p99_ms": nearest_rank(attempted, 99),
        "ttft_p50_ms": nearest_rank(ttft, 50),
        "ttft_p95_ms": nearest_rank(ttft, 95),
    }
