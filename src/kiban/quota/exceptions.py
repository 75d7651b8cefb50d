"""Refusals by plans, quotas and rate limits, and the quota routes' not-founds.

Hierarchy (all ``kiban.core.errors.AppError``)::

    Forbidden
    └── ModelNotInPlan          403 model_not_in_plan   the plan may not use this model
    PayloadTooLarge
    └── PromptTooLarge          413 prompt_too_large    the prompt exceeds the plan's cap
    TooManyRequests
    ├── QuotaExceeded           429 quota_exceeded      the period's allowance (tokens or USD)
    │                                                   does not cover the request; Retry-After
    │                                                   counts down to the period's reset
    └── RateLimited             429 rate_limited        requests or tokens per minute; Retry-After
                                                        counts down to the next window
    BadRequest
    └── UnknownPlan             400 unknown_plan        an admin named a plan not in the file
    NotFound
    ├── NoSuchUser              404 no_such_user        no user with this id (admin usage report)
    └── NoSuchKey               404 no_such_api_key     no such API key, or another user's
    ServiceUnavailable
    └── QuotaUnavailable        503 quota_unavailable   the quota store (database or Redis) is
                                                        unreachable: refuse rather than meter
                                                        nothing (fail closed)
"""

from __future__ import annotations

from typing import Any

from kiban.core.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
)


class ModelNotInPlan(Forbidden):
    code = "model_not_in_plan"
    default_message = "Your plan does not include this model."


class PromptTooLarge(PayloadTooLarge):
    code = "prompt_too_large"
    default_message = "The prompt is larger than your plan allows."


class QuotaExceeded(TooManyRequests):
    code = "quota_exceeded"
    default_message = "Your plan's allowance for this period is used up."


class RateLimited(TooManyRequests):
    code = "rate_limited"
    default_message = "Too many requests; slow down."


class QuotaUnavailable(ServiceUnavailable):
    code = "quota_unavailable"
    default_message = "Usage limits cannot be checked right now; the request was not sent."
    default_hint = "Retry shortly."


class UnknownPlan(BadRequest):
    code = "unknown_plan"
    default_message = "There is no such plan."


class NoSuchUser(NotFound):
    code = "no_such_user"
    default_message = "No user with this id."


class NoSuchKey(NotFound):
    code = "no_such_api_key"
    default_message = "No API key with this id."


def with_retry_after(seconds: int, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus ``Retry-After`` (whole seconds, at least 1)."""
    return {**headers, "Retry-After": str(max(seconds, 1))}


def error_fields(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}
