"""Where quota counters live: the protocol in ``base``, one module per backend.

- ``sql``: ``SqlQuotaStore``, SQLite and PostgreSQL; its Core statements are in
  ``sql_statements``, and SQLite runs them through ``sqlite_fast_path`` (one thread hop each).
- ``redis``: ``RedisQuotaStore``, Lua scripts in Redis; ``redis_drain`` moves its settle
  stream into the database through ``durable_copy`` (once per reservation id).
"""

from kiban.quota.store.base import (
    SETTLEMENT_RETENTION,
    WINDOW_SECONDS,
    KeyWindow,
    QuotaState,
    QuotaStore,
    RefusalReason,
    Reservation,
    ReserveOutcome,
    SettleResult,
)
from kiban.quota.store.redis import RedisQuotaStore
from kiban.quota.store.sql import SqlQuotaStore

__all__ = [
    "SETTLEMENT_RETENTION",
    "WINDOW_SECONDS",
    "KeyWindow",
    "QuotaState",
    "QuotaStore",
    "RedisQuotaStore",
    "RefusalReason",
    "Reservation",
    "ReserveOutcome",
    "SettleResult",
    "SqlQuotaStore",
]
