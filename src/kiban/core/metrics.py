"""Prometheus metrics, defined in one place; every domain imports the ones it updates.

Exposed at ``GET /metrics`` (admin/ops issue). Label values must stay low-cardinality: route
templates (not raw paths), model names from the models file, status words.
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@functools.cache
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once per label set (``labels`` validates and locks
    on every call). For label values from a bounded set only: models, endpoints, statuses."""
    return metric.labels(*labels)


REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "kiban_http_requests_total", "HTTP requests.", ["method", "route", "status"], registry=REGISTRY
)
HTTP_LATENCY = Histogram(
    "kiban_http_request_duration_seconds",
    "HTTP request latency.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
AI_REQUESTS = Counter(
    "kiban_ai_requests_total",
    "AI requests by outcome.",
    ["model", "endpoint", "status"],
    registry=REGISTRY,
)
AI_TOKENS = Counter(
    "kiban_ai_tokens_total",
    "Tokens used.",
    ["model", "kind"],
    registry=REGISTRY,  # kind: prompt|completion
)
AI_COST = Counter("kiban_ai_cost_usd_total", "Estimated cost in USD.", ["model"], registry=REGISTRY)
AI_TTFT = Histogram(
    "kiban_ai_time_to_first_token_seconds",
    "Time to the first streamed token.",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "kiban_upstream_errors_total", "Upstream failures.", ["provider", "kind"], registry=REGISTRY
)
UPSTREAM_RETRIES = Counter(
    "kiban_upstream_retries_total", "Upstream retries.", ["provider", "reason"], registry=REGISTRY
)
# Per deployment (names come from the models file: bounded). Outcome of one attempt: ok, timeout,
# unavailable (refused, 429, 503), error (other 5xx, bad credentials), rejected (the upstream
# refused the request: a 4xx that is the caller's), cut (a stream that failed before its first
# chunk was passed on).
DEPLOYMENT_ATTEMPTS = Counter(
    "kiban_deployment_attempts_total",
    "Upstream attempts by deployment and outcome.",
    ["deployment", "outcome"],
    registry=REGISTRY,
)
DEPLOYMENT_REQUESTS = Counter(
    "kiban_deployment_requests_total",
    "Requests by the deployment that served them (or was tried last) and their ledger status.",
    ["deployment", "status"],
    registry=REGISTRY,
)
DEPLOYMENT_LATENCY = Histogram(
    "kiban_deployment_attempt_duration_seconds",
    "Time of one upstream attempt to its answer (a stream: to its first chunk).",
    ["deployment"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
DEPLOYMENT_BREAKER = Gauge(
    "kiban_deployment_breaker_state",
    "A deployment's circuit breaker: 0 closed (takes traffic), 1 half-open (probing), 2 open.",
    ["deployment"],
    registry=REGISTRY,
)
DEPLOYMENT_IN_FLIGHT = Gauge(
    "kiban_deployment_in_flight",
    "Requests a deployment is answering now (streams until they end).",
    ["deployment"],
    registry=REGISTRY,
)
API_KEY_CACHE = Counter(
    "kiban_api_key_cache_total",
    "API-key authentications by cache outcome (bypass: the poller is behind, the database reads).",
    ["outcome"],  # hit | miss | bypass
    registry=REGISTRY,
)
API_KEY_CACHE_POLL_FAILURES = Counter(
    "kiban_api_key_cache_poll_failures_total",
    "Failed polls of the API-key cache's change counter.",
    registry=REGISTRY,
)
LEDGER_QUEUE_DEPTH = Gauge(
    "kiban_ledger_queue_depth", "Usage records waiting to be written.", registry=REGISTRY
)
LEDGER_WRITTEN = Counter(
    "kiban_ledger_records_written_total", "Usage records written.", registry=REGISTRY
)
LEDGER_DROPPED = Counter(
    "kiban_ledger_records_dropped_total", "Usage records dropped (must stay 0).", registry=REGISTRY
)
QUOTA_REJECTIONS = Counter(
    "kiban_quota_rejections_total",
    "Requests refused by plans, quotas and rate limits.",
    ["reason"],
    registry=REGISTRY,
)
QUOTA_SETTLE_RETRIES = Counter(
    "kiban_quota_settle_retries_total",
    "Quota settlements that failed once, by how they ended (abandoned must stay 0).",
    ["outcome"],
    registry=REGISTRY,
)
QUOTA_STREAM_ENTRIES = Gauge(
    "kiban_quota_stream_entries",
    "Settlements in Redis's settle stream not yet drained into the database (every process's).",
    registry=REGISTRY,
)
QUOTA_STREAM_DRAINED = Counter(
    "kiban_quota_stream_drained_total",
    "Settle stream entries drained, by outcome (written; duplicate: drained before; dropped: "
    "refused by the database, must stay 0).",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_EVENTS = Counter(
    "kiban_webhook_events_total", "Stripe webhook events.", ["type", "outcome"], registry=REGISTRY
)
