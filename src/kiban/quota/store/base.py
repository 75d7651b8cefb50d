"""The quota store interface: atomic reserve, settle, expiry and reads of quota and rate state.

Two implementations keep the same promise (no concurrent burst, second process or crash can push
``used + reserved`` past the limit):

- ``SqlQuotaStore`` (``store.sql``): one conditional UPDATE on the user's period row checks
  and takes the quota and the per-minute rate window together. SQLite and PostgreSQL.
- ``RedisQuotaStore`` (``store.redis``): one Lua script does the same in Redis; the settle
  script appends the settlement and its ledger record to a stream that every process drains
  into the database (the ledger, and a durable copy of what was used).

Amounts are integers: tokens, and cost in nano-USD (1e-9 USD).

A settle is idempotent per reservation id: the first one that commits records the id (in the
same transaction, or Redis script, as the usage), and a retry of it changes nothing. So a
settle that failed, or whose reply was lost, can simply be tried again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

NANOS_PER_USD = 1_000_000_000
WINDOW_SECONDS = 60
# How long a settled reservation's id is remembered: far longer than settle retries last.
SETTLEMENT_RETENTION = timedelta(days=1)

RefusalReason = Literal["quota", "cost", "rate_requests", "rate_tokens"]
# settled: the usage replaced the reservation; late: the reservation had expired (its hold was
# already released), the usage was added; duplicate: this reservation was settled before.
SettleResult = Literal["settled", "late", "duplicate"]


def usd_to_nanos(value: Decimal | None) -> int:
    """Whole nano-USD, rounded up (a budget is never under-counted)."""
    if value is None:
        return 0
    scaled = value * NANOS_PER_USD
    whole = int(scaled)
    return whole + (1 if scaled > whole else 0)


def nanos_to_usd(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_USD


def window_of(timestamp: float) -> int:
    """The fixed one-minute rate window (epoch minute) a timestamp falls in."""
    return int(timestamp // WINDOW_SECONDS)


@dataclass(frozen=True)
class Reservation:
    """What to take from a user's period: checked and taken in one atomic step."""

    id: uuid.UUID
    user_id: uuid.UUID
    period_start: datetime
    period_end: datetime
    tokens: int
    cost_nanos: int
    token_limit: int  # the plan's allowance; the period's extra tokens are added by the store
    cost_limit_nanos: int | None
    requests_per_minute: int
    tokens_per_minute: int | None
    now: datetime
    expires_at: datetime

    @property
    def window(self) -> int:
        return window_of(self.now.timestamp())


@dataclass(frozen=True)
class QuotaState:
    """A period's counters (after the reservation, when it was taken)."""

    used_tokens: int = 0
    reserved_tokens: int = 0
    extra_tokens: int = 0
    used_cost_nanos: int = 0
    reserved_cost_nanos: int = 0
    window: int = 0
    window_requests: int = 0
    window_tokens: int = 0

    def requests_in(self, window: int) -> int:
        return self.window_requests if self.window == window else 0

    def tokens_in(self, window: int) -> int:
        return self.window_tokens if self.window == window else 0


@dataclass(frozen=True)
class ReserveOutcome:
    """Taken (``refused is None``) or why not; ``state`` holds the counters either way."""

    state: QuotaState
    refused: RefusalReason | None = None
    handle: object = None  # what settle needs to find the reservation again


def refusal(reservation: Reservation, state: QuotaState) -> RefusalReason | None:
    """Why ``reservation`` does not fit ``state`` (the check every store makes), or None."""
    r = reservation
    if state.used_tokens + state.reserved_tokens + r.tokens > r.token_limit + state.extra_tokens:
        return "quota"
    if (
        r.cost_limit_nanos is not None
        and state.used_cost_nanos + state.reserved_cost_nanos + r.cost_nanos > r.cost_limit_nanos
    ):
        return "cost"
    if state.requests_in(r.window) >= r.requests_per_minute:
        return "rate_requests"
    if (
        r.tokens_per_minute is not None
        and state.tokens_in(r.window) + r.tokens > r.tokens_per_minute
    ):
        return "rate_tokens"
    return None


@dataclass(frozen=True)
class KeyWindow:
    """An API key's own limits and this minute's counts (after taking, when allowed)."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    window: int
    window_requests: int
    window_tokens: int
    refused: RefusalReason | None = None


class QuotaStore(Protocol):
    # Sessions for reads on the hot path (entitlements), on the store's own autocommit pool.
    read_sessions: async_sessionmaker[AsyncSession]

    async def reserve(self, reservation: Reservation) -> ReserveOutcome:
        """Take the reservation atomically, or say why it does not fit."""
        ...

    async def settle(
        self,
        reservation: Reservation,
        handle: object,
        *,
        used_tokens: int,
        used_cost_nanos: int,
        record: dict[str, Any] | None = None,
    ) -> SettleResult:
        """Replace the reservation by actual usage, once per reservation id; with ``record``,
        write that ledger record (and its rollups) in the same database transaction."""
        ...

    async def take_key_window(
        self, api_key_id: uuid.UUID, tokens: int, window: int
    ) -> KeyWindow | None:
        """Count a request in the key's own window if it has limits; None when it has none."""
        ...

    async def state(self, user_id: uuid.UUID, period_start: datetime) -> QuotaState:
        """The period's current counters (zeros when nothing was used yet)."""
        ...

    async def set_extra_tokens(
        self, user_id: uuid.UUID, period_start: datetime, period_end: datetime, extra: int
    ) -> None:
        """Grant ``extra`` tokens on top of the plan for this period (replaces earlier grants)."""
        ...

    async def extra_tokens_changed(
        self, user_id: uuid.UUID, period_start: datetime, extra: int
    ) -> None:
        """A grant was written to the database (in a request's transaction): mirror it."""
        ...

    async def release_expired(self, now: datetime) -> int:
        """Release reservations whose process never settled them (returns how many), and forget
        settlements older than ``SETTLEMENT_RETENTION``."""
        ...

    async def start(self) -> None:
        """Start the store's background work, if it has any (Redis: draining its stream)."""
        ...

    async def close(self) -> None: ...
