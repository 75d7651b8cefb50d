"""Limits as a client sees them: seconds until the resets, the rate-limit and quota headers.

Shared by the admission (headers on every AI response and refusal) and the usage report.
"""

from __future__ import annotations

import math
from datetime import datetime

from kiban.billing import Entitlement, Plan
from kiban.quota.store.base import WINDOW_SECONDS, QuotaState


def seconds_until(moment: datetime, now: datetime) -> int:
    """Whole seconds from ``now`` until ``moment``, rounded up (never negative)."""
    return max(math.ceil((moment - now).total_seconds()), 0)


def window_reset(now: datetime) -> int:
    """Seconds until the current one-minute rate window ends (1..60)."""
    ts = now.timestamp()
    return max(math.ceil((ts // WINDOW_SECONDS + 1) * WINDOW_SECONDS - ts), 1)


def token_limit(plan: Plan, state: QuotaState) -> int:
    return plan.monthly_tokens + state.extra_tokens


LIMIT_HEADERS = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-Limit-Tokens",
    "X-RateLimit-Remaining-Tokens",
    "X-RateLimit-Key-Limit",
    "X-RateLimit-Key-Remaining",
    "X-Quota-Limit",
    "X-Quota-Remaining",
    "X-Quota-Reset",
)


def limit_headers(
    plan: Plan, entitlement: Entitlement, state: QuotaState, now: datetime
) -> dict[str, str]:
    """The rate-limit and quota headers for a response, from the counters ``state`` holds."""
    window = int(now.timestamp() // WINDOW_SECONDS)
    limit = token_limit(plan, state)
    headers = {
        "X-RateLimit-Limit": str(plan.requests_per_minute),
        "X-RateLimit-Remaining": str(max(plan.requests_per_minute - state.requests_in(window), 0)),
        "X-RateLimit-Reset": str(window_reset(now)),
        "X-Quota-Limit": str(limit),
        "X-Quota-Remaining": str(max(limit - state.used_tokens - state.reserved_tokens, 0)),
        "X-Quota-Reset": str(seconds_until(entitlement.period_end, now)),
    }
    if plan.tokens_per_minute is not None:
        headers["X-RateLimit-Limit-Tokens"] = str(plan.tokens_per_minute)
        remaining = max(plan.tokens_per_minute - state.tokens_in(window), 0)
        headers["X-RateLimit-Remaining-Tokens"] = str(remaining)
    return headers
