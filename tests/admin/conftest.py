"""Admin fixtures: a seeded usage ledger (``tests.factories``) and plain-Python references for
every figure."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.models import UsageRecord
from tests.factories import STATUS_WEIGHTS, LedgerSpec, seed_ledger


@pytest.fixture
def ledger_owners(request: pytest.FixtureRequest) -> list[uuid.UUID | None]:
    """The ids of the module's ``LEDGER.owners``, each resolved as the fixture it names."""
    # A plain fixture: async ones cannot resolve other async fixtures by name.
    spec: LedgerSpec = request.module.LEDGER
    return [request.getfixturevalue(owner).id if owner else None for owner in spec.owners]


@pytest.fixture
async def ledger(
    request: pytest.FixtureRequest, session: AsyncSession, ledger_owners: list[uuid.UUID | None]
) -> list[UsageRecord]:
    """The seeded ledger the test module's ``LEDGER`` (a ``LedgerSpec``) describes."""
    return await seed_ledger(session, request.module.LEDGER, ledger_owners)


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
