"""Each process's cache of authenticated API keys: no database round trip on a hit, and every
change that decides a key's outcome honoured on every instance within ``STALENESS_BOUND`` (1 s).

How it stays exact (docs/decisions/0008-api-key-cache-with-epoch-invalidation.md):

- Triggers (migration 0012) bump ``auth_epoch`` in the same transaction as every write that can
  change what a key authenticates as (its revocation, its limits row, its user's row, the user's
  subscriptions), and record the user in ``auth_changes`` with the new value. Writers hold the
  counter's row lock until they commit, so the values become visible in order.
- A poller reads both in one statement every ``KIBAN_API_KEY_CACHE_POLL_SECONDS`` (0.25 s), on a
  connection of its own, and drops the entries of each user changed since its last poll.
- The cache answers only while the last successful poll *started* less than the bound ago: a
  change committed before that poll started was seen by it, so what the cache serves is never
  older than the bound. When the last poll is too old (the loop lagged under load), a request
  waits for a fresh poll, one shared by every request waiting (``fresh``), rather than each
  reading its key: under a burst the database sees one poll, not a thousand lookups. When polls
  fail, every request reads the database (fail closed).
- An entry is stored only if its read is at least as new as the last poll (the lookup selects the
  counter too): a read older than a change the poller has already handled is not cached.
- Only keys that authenticated are stored, in an LRU of ``KIBAN_API_KEY_CACHE_SIZE``: unknown or
  wrong keys always go to the database and can never fill memory.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import CompoundSelect, Uuid, bindparam, cast, null, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kiban.core.db import create_engine
from kiban.core.metrics import API_KEY_CACHE, API_KEY_CACHE_POLL_FAILURES
from kiban.models import AuthChange, AuthEpoch
from kiban.settings import Settings

STALENESS_BOUND = 1.0  # seconds: the most a cached answer may lag the database
_NOTHING_SEEN = 2**63 - 1  # the first poll asks for no changes: the cache starts empty
log = structlog.get_logger("kiban.auth")


@dataclass
class CachedKey:
    """What an authenticated key resolved to; ``last_used_at`` moves as this process writes it."""

    api_key_id: uuid.UUID
    user_id: uuid.UUID
    user: Mapping[str, Any]  # the user's column values, as read (a fresh User is built per hit)
    # The latest period end of the user's subscriptions that could grant paid access: compared
    # with the time of each request, so one that ends is judged then, not when it was cached.
    paid_access_until: datetime | None
    has_own_limits: bool
    last_used_at: datetime | None
    # One detached User built from ``user``, shared by the read-only callers (the gateway), for
    # whom building an ORM instance per request was a measurable part of the request's CPU.
    shared_user: Any = None

    def may_be_subscribed(self, now: datetime) -> bool:
        """False when no subscription can grant paid access at ``now`` (billing need not look)."""
        return self.paid_access_until is not None and self.paid_access_until > now


def _poll_statement() -> CompoundSelect[uuid.UUID | None, int]:
    # One round trip and one snapshot: the counter (the row with no user) and the users changed
    # since the last poll. Both reads must see the same commits, or a change could be skipped.
    counter = select(cast(null(), Uuid()).label("user_id"), AuthEpoch.value.label("epoch")).where(
        AuthEpoch.id == 1
    )
    changed = select(AuthChange.user_id, AuthChange.epoch).where(
        AuthChange.epoch > bindparam("seen")
    )
    return union_all(counter, changed)


class ApiKeyCache:
    """An LRU of ``CachedKey`` by key hash, kept exact by ``poll`` (see the module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine | None,
        *,
        max_size: int,
        poll_interval: float,
        bound: float = STALENESS_BOUND,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_size = max_size if engine is not None else 0
        self.poll_interval = poll_interval
        self.bound = bound
        self.epoch: int | None = None  # the counter at the last successful poll
        # Autocommit: each poll is one statement with a fresh snapshot, no transaction left open
        # (on SQLite an open read would pin the snapshot, and the poller would see nothing new).
        self._engine = (
            engine.execution_options(isolation_level="AUTOCOMMIT") if engine is not None else None
        )
        self._monotonic = monotonic
        self._entries: OrderedDict[str, CachedKey] = OrderedDict()
        self._by_user: dict[uuid.UUID, set[str]] = {}
        self._fresh_since = -math.inf  # when the last successful poll started
        self._connection: AsyncConnection | None = None
        self._failing = False
        self._statement = _poll_statement()
        self._polling: asyncio.Future[bool] | None = None  # the poll in flight, shared

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def serving(self) -> bool:
        """Whether a hit may be answered: only while the last poll started within the bound."""
        return self.serving_at(self._monotonic())

    def serving_at(self, asked: float) -> bool:
        """Whether a lookup asked at ``asked`` (this cache's clock) may be answered: the last
        poll started less than the bound before it. A poll that started after a request was
        asked saw every change committed before, however long the request then waited."""
        return self.max_size > 0 and asked - self._fresh_since < self.bound

    def now(self) -> float:
        return self._monotonic()

    def get(self, key_hash: str, asked: float | None = None) -> CachedKey | None:
        """The cached key, or None (not cached, or the cache cannot vouch for it right now)."""
        if self.max_size == 0:  # turned off: nothing to count
            return None
        if not self.serving_at(self._monotonic() if asked is None else asked):
            API_KEY_CACHE.labels(outcome="bypass").inc()
            return None
        entry = self._entries.get(key_hash)
        if entry is None:
            API_KEY_CACHE.labels(outcome="miss").inc()
            return None
        self._entries.move_to_end(key_hash)
        API_KEY_CACHE.labels(outcome="hit").inc()
        return entry

    def put(self, key_hash: str, entry: CachedKey, read_epoch: int) -> bool:
        """Store a key read at ``read_epoch``; False when that read is older than the last poll
        (a change between the read and the poll may already have been handled)."""
        if self.max_size == 0 or self.epoch is None or read_epoch < self.epoch:
            return False
        self._drop(key_hash)
        self._entries[key_hash] = entry
        self._by_user.setdefault(entry.user_id, set()).add(key_hash)
        while len(self._entries) > self.max_size:
            self._drop(next(iter(self._entries)))
        return True

    def forget_user(self, user_id: uuid.UUID) -> None:
        """Drop every key of the user."""
        for key_hash in self._by_user.pop(user_id, set()):
            self._entries.pop(key_hash, None)

    def clear(self) -> None:
        self._entries.clear()
        self._by_user.clear()

    def _drop(self, key_hash: str) -> None:
        entry = self._entries.pop(key_hash, None)
        if entry is not None:
            hashes = self._by_user.get(entry.user_id)
            if hashes is not None:
                hashes.discard(key_hash)
                if not hashes:
                    del self._by_user[entry.user_id]

    async def fresh(self, asked: float) -> bool:
        """Whether a lookup asked at ``asked`` may be answered, after waiting for a new poll if
        the last is too old.

        The poll is shared: whoever finds the cache stale joins the poll in flight or starts one.
        Under a burst the loop may lag past the bound; judged at ``asked``, the poll that then
        ran still vouches for the requests that waited for it.
        """
        if self.serving_at(asked):
            return True
        if self.max_size == 0 or self._engine is None:
            return False
        await self.poll()
        return self.serving_at(asked)

    async def poll(self) -> bool:
        """Read the counter and the users changed since the last poll, and drop their keys.

        True on success. Concurrent callers share one poll (its connection is one). Public so
        that tests (and start-up) need not wait for the next tick.
        """
        if self._engine is None:
            return False
        if self._polling is None or self._polling.done():
            self._polling = asyncio.ensure_future(self._poll())
        return await asyncio.shield(self._polling)

    async def _poll(self) -> bool:
        assert self._engine is not None
        started = self._monotonic()
        try:
            # A poll that hangs must not keep the cache serving: give up at the bound.
            async with asyncio.timeout(self.bound):
                if self._connection is None:
                    self._connection = await self._engine.connect()
                seen = _NOTHING_SEEN if self.epoch is None else self.epoch
                rows = (await self._connection.execute(self._statement, {"seen": seen})).all()
        except Exception as e:  # any failure: stop serving once the bound passes, retry
            API_KEY_CACHE_POLL_FAILURES.inc()
            if not self._failing:
                log.warning("api_key_cache_poll_failed", error=repr(e))
            self._failing = True
            await self._drop_connection(invalidate=True)
            return False
        current = 0  # no counter row: a freshly truncated table
        changed: list[uuid.UUID] = []
        for user_id, epoch in rows:
            if user_id is None:
                current = epoch
            else:
                changed.append(user_id)
        if self.epoch is None or current < self.epoch:
            # The first poll, or the counter went back (a database restored or truncated): no
            # entry can be matched to the changes since, so none is kept.
            self.clear()
        else:
            for user_id in changed:
                self.forget_user(user_id)
        self.epoch = current
        self._fresh_since = started
        if self._failing:
            log.info("api_key_cache_poll_recovered")
            self._failing = False
        return True

    async def run(self) -> None:
        """Poll every ``poll_interval`` seconds (between starts) until cancelled."""
        while True:
            started = self._monotonic()
            await self.poll()
            await asyncio.sleep(max(0.0, self.poll_interval - (self._monotonic() - started)))

    async def aclose(self) -> None:
        """Release the poller's connection (the lifespan's end)."""
        await self._drop_connection(invalidate=False)

    async def _drop_connection(self, *, invalidate: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with suppress(Exception):  # after a failure it is broken, most likely: discard it
            if invalidate:
                await connection.invalidate()
            else:
                await connection.close()


@asynccontextmanager
async def running_key_cache(settings: Settings) -> AsyncIterator[ApiKeyCache]:
    """The app's cache and its poller, for the lifespan (``KIBAN_API_KEY_CACHE_SIZE=0``: off)."""
    if settings.api_key_cache_size == 0:
        yield ApiKeyCache(None, max_size=0, poll_interval=settings.api_key_cache_poll_seconds)
        return
    # Its own engine and connection: polls must not queue behind requests for a pooled
    # connection (under load they would lag, and the cache would stop serving just when it
    # matters).
    engine = create_engine(settings.database_url, pool_size=1)
    cache = ApiKeyCache(
        engine,
        max_size=settings.api_key_cache_size,
        poll_interval=settings.api_key_cache_poll_seconds,
    )
    await cache.poll()  # a failure here only means the cache starts closed
    task = asyncio.create_task(cache.run(), name="api-key-cache-poller")
    try:
        yield cache
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await cache.aclose()
        await engine.dispose()
