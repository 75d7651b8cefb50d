"""Admin and operations errors.

BadRequest
├── InvalidWindow        400 invalid_window
├── TooManyBuckets       400 too_many_buckets
└── InvalidFilter        400 invalid_filter
Forbidden
├── MetricsForbidden     403 metrics_forbidden
└── CsrfFailed           403 csrf_failed
"""

from __future__ import annotations

from kiban.core.errors import BadRequest, Forbidden


class InvalidWindow(BadRequest):
    code = "invalid_window"
    default_message = "The time window is not valid."
    default_hint = "Pass ISO 8601 times, e.g. from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z."


class TooManyBuckets(BadRequest):
    code = "too_many_buckets"

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(
            f"The window spans {count} buckets; at most {limit} are allowed.",
            hint="Use interval=day or a shorter window.",
            extra={"buckets": count, "max_buckets": limit},
        )


class InvalidFilter(BadRequest):
    code = "invalid_filter"
    default_message = "A filter value is not valid."


class MetricsForbidden(Forbidden):
    code = "metrics_forbidden"
    default_message = "Metrics are not available to this client."
    default_hint = (
        "Scrape from an address in KIBAN_METRICS_ALLOWED_NETWORKS, or send "
        "'Authorization: Bearer <KIBAN_METRICS_TOKEN>'."
    )


class CsrfFailed(Forbidden):
    code = "csrf_failed"
    default_message = "The form's security token is missing or does not match."
    default_hint = "Reload the page and submit the form again."
