"""Prometheus metrics, defined in one place; every domain imports the ones it updates.

Exposed at ``GET /metrics`` (admin/ops issue). Label values must stay low-cardinality: route
templates (not raw paths), model names from the models file, status words.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
