"""Quota state in Redis: one Lua script checks and takes quota and rate window atomically.

Keys of a user share the user's hash tag (``{user-id}``):

- ``kiban:quota:{uid}:<period start>``: hash ``used``, ``reserved``, ``extra``, ``used_cost``,
  ``reserved_cost`` (tokens and nano-USD);
- ``…:held``: sorted set of reservations in flight (``<id>:<tokens>:<cost>``) scored by expiry;
  every reserve first releases the expired ones, so a crashed process locks nobody out;
- ``…:unseeded``: how many settles found the period's hash missing (a re-seed checks it);
- ``kiban:rate:{uid}``: hash ``window`` (epoch minute), ``requests``, ``tokens``;
- ``kiban:settled:{uid}:<reservation id>``: set by the settle script, kept a day, so that a
  retried settle changes nothing.

The settle script also appends the settlement, with the call's ledger record, to ONE stream
(``kiban:settlements`` by default; not under a user's hash tag), in the same atomic step: the
response waits for Redis only, and ``redis_drain.StreamDrainer`` moves the entries into the
database (the ledger, its rollups, and the durable copy of ``used``), once per reservation id.
A script that touches a user's keys and the stream needs them on one node: a single Redis (or
a primary with replicas) is what this supports; see docs/quotas.md for what Redis Cluster would
need.

Redis is the authority while the period's key exists. When it is missing (first use, a Redis
restart, an eviction), it is seeded from the database's durable copy PLUS the stream's entries
for that period that the copy does not count yet (read in one database snapshot), and only if
no settle found the key missing meanwhile (``…:unseeded`` unchanged): no usage is forgotten or
counted twice whatever the drainer does in between.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kiban.core import clock
from kiban.quota.store.base import (
    SETTLEMENT_RETENTION,
    KeyWindow,
    QuotaState,
    Reservation,
    ReserveOutcome,
    SettleResult,
)
from kiban.quota.store.durable_copy import Settlement, seed_snapshot
from kiban.quota.store.redis_drain import StreamDrainer, entry_fields
from kiban.quota.store.sql import SqlQuotaStore

_GRACE_SECONDS = 3 * 24 * 3600  # keep a period's key a little past its end for late settles
_RATE_TTL_SECONDS = 120
_SEED_ATTEMPTS = 10
_PAGE = 1000  # stream entries per XRANGE while a re-seed looks for undrained settlements
DEFAULT_STREAM = "kiban:settlements"

_RESERVE = """
local q, held, rate = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', q) == 0 then return {'seed'} end
local now = tonumber(ARGV[8])
local expired = redis.call('ZRANGEBYSCORE', held, '-inf', now)
if #expired > 0 then
  local t, c = 0, 0
  for _, m in ipairs(expired) do
    local mt, mc = string.match(m, ':(%d+):(%d+)$')
    t = t + tonumber(mt)
    c = c + tonumber(mc)
  end
  redis.call('HINCRBY', q, 'reserved', 0 - t)
  redis.call('HINCRBY', q, 'reserved_cost', 0 - c)
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
end
local s = redis.call('HMGET', q, 'used', 'reserved', 'extra', 'used_cost', 'reserved_cost')
local used, reserved, extra = tonumber(s[1]) or 0, tonumber(s[2]) or 0, tonumber(s[3]) or 0
local ucost, rcost = tonumber(s[4]) or 0, tonumber(s[5]) or 0
local w = tonumber(ARGV[7])
local rw = redis.call('HMGET', rate, 'window', 'requests', 'tokens')
local wreq, wtok = 0, 0
if tonumber(rw[1]) == w then
  wreq = tonumber(rw[2]) or 0
  wtok = tonumber(rw[3]) or 0
end
local n, c = tonumber(ARGV[1]), tonumber(ARGV[2])
local lim, clim = tonumber(ARGV[3]), tonumber(ARGV[4])
local rpm, tpm = tonumber(ARGV[5]), tonumber(ARGV[6])
local verdict = 'ok'
if used + reserved + n > lim + extra then
  verdict = 'quota'
elseif clim >= 0 and ucost + rcost + c > clim then
  verdict = 'cost'
elseif wreq >= rpm then
  verdict = 'rate_requests'
elseif tpm >= 0 and wtok + n > tpm then
  verdict = 'rate_tokens'
end
if verdict == 'ok' then
  reserved = reserved + n
  rcost = rcost + c
  wreq = wreq + 1
  wtok = wtok + n
  redis.call('HSET', q, 'reserved', reserved, 'reserved_cost', rcost)
  redis.call('ZADD', held, tonumber(ARGV[9]), ARGV[10])
  redis.call('HSET', rate, 'window', w, 'requests', wreq, 'tokens', wtok)
  redis.call('EXPIRE', rate, tonumber(ARGV[12]))
  redis.call('EXPIRE', q, tonumber(ARGV[11]))
  redis.call('EXPIRE', held, tonumber(ARGV[11]))
end
return {verdict, used, reserved, extra, ucost, rcost, w, wreq, wtok}
"""

_SETTLE = """
local q, held, rate, settled = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if not redis.call('SET', settled, 1, 'NX', 'EX', tonumber(ARGV[8])) then return -1 end
local removed = redis.call('ZREM', held, ARGV[1])
if redis.call('EXISTS', q) == 1 then
  if removed == 1 then
    redis.call('HINCRBY', q, 'reserved', 0 - tonumber(ARGV[6]))
    redis.call('HINCRBY', q, 'reserved_cost', 0 - tonumber(ARGV[7]))
  end
  redis.call('HINCRBY', q, 'used', ARGV[2])
  redis.call('HINCRBY', q, 'used_cost', ARGV[3])
else
  -- No live counters: a re-seed under way may not have seen this entry, and must start again.
  redis.call('INCR', KEYS[5])
  redis.call('EXPIRE', KEYS[5], tonumber(ARGV[9]))
end
if removed == 1 then
  local rw = redis.call('HMGET', rate, 'window', 'tokens')
  if tonumber(rw[1]) == tonumber(ARGV[5]) then
    local t = (tonumber(rw[2]) or 0) - tonumber(ARGV[4])
    if t < 0 then t = 0 end
    redis.call('HSET', rate, 'tokens', t)
  end
end
redis.call('XADD', KEYS[6], '*', unpack(ARGV, 10))
return removed
"""

# Seeding replaces nothing that exists; stale reservations of a vanished key are dropped with it.
# It gives up (0) when a settle found the key missing since the seed's reads began.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[5] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'used', ARGV[1], 'reserved', 0, 'extra', ARGV[2],
           'used_cost', ARGV[3], 'reserved_cost', 0)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""

_SET_EXTRA = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'extra', ARGV[1]) end
return 1
"""


def _keys(user_id: uuid.UUID, period_start: datetime) -> list[str]:
    quota = f"kiban:quota:{{{user_id}}}:{int(period_start.timestamp())}"
    return [quota, quota + ":held", f"kiban:rate:{{{user_id}}}"]


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _ttl(period_end: datetime) -> int:
    return max(int((period_end - clock.now()).total_seconds()), 0) + _GRACE_SECONDS


def _member(reservation: Reservation) -> str:
    return f"{reservation.id.hex}:{reservation.tokens}:{reservation.cost_nanos}"


class RedisQuotaStore:
    """Quota and rate state in Redis, with the database as its durable copy."""

    def __init__(
        self, redis: Redis, database: SqlQuotaStore, *, stream: str = DEFAULT_STREAM
    ) -> None:
        self._redis = redis
        self._db = database
        self.stream = stream
        self.drainer = StreamDrainer(redis, database, stream)
        self.read_sessions = database.read_sessions
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._seed = redis.register_script(_SEED)
        self._set_extra = redis.register_script(_SET_EXTRA)

    @classmethod
    def from_urls(
        cls,
        redis_url: str,
        database_url: str,
        *,
        pool_size: int = 5,
        stream: str = DEFAULT_STREAM,
    ) -> RedisQuotaStore:
        """A store on Redis at ``redis_url`` with its durable copy in the app's database."""
        redis = Redis.from_url(redis_url, decode_responses=True)
        return cls(redis, SqlQuotaStore.from_url(database_url, pool_size=pool_size), stream=stream)

    async def start(self) -> None:
        """Start draining the settle stream into the database (one consumer per process)."""
        self.drainer.start()

    async def drain(self) -> int:
        """Drain what the settle stream holds now for this process (tests, shutdown)."""
        return await self.drainer.drain()

    async def reserve(self, reservation: Reservation) -> ReserveOutcome:
        """Take the reservation atomically, or say why it does not fit."""
        r = reservation
        keys = _keys(r.user_id, r.period_start)
        args: list[int | str] = [
            r.tokens,
            r.cost_nanos,
            r.token_limit,
            -1 if r.cost_limit_nanos is None else r.cost_limit_nanos,
            r.requests_per_minute,
            -1 if r.tokens_per_minute is None else r.tokens_per_minute,
            r.window,
            _ms(r.now),
            _ms(r.expires_at),
            _member(r),
            _ttl(r.period_end),
            _RATE_TTL_SECONDS,
        ]
        for _ in range(3):
            reply: list[Any] = await self._reserve(keys=keys, args=args)
            if reply[0] != "seed":
                break
            await self._seed_from_database(r.user_id, r.period_start, r.period_end)
        else:  # pragma: no cover - the key vanished three times in a row
            raise RuntimeError("quota key could not be seeded in Redis")
        verdict, *numbers = reply
        used, reserved, extra, ucost, rcost, window, wreq, wtok = (int(x) for x in numbers)
        state = QuotaState(used, reserved, extra, ucost, rcost, window, wreq, wtok)
        return ReserveOutcome(state=state, refused=None if verdict == "ok" else verdict)

    async def _seed_from_database(
        self, user_id: uuid.UUID, period_start: datetime, period_end: datetime
    ) -> None:
        quota, held, _ = _keys(user_id, period_start)
        unseeded = quota + ":unseeded"
        for _ in range(_SEED_ATTEMPTS):
            before = await self._redis.get(unseeded) or "0"
            pending = await self._undrained(user_id, period_start)
            durable, counted = await seed_snapshot(self._db, user_id, period_start, list(pending))
            tokens, cost = durable.used_tokens, durable.used_cost_nanos
            for settlement_id, (t, c) in pending.items():
                if settlement_id not in counted:
                    tokens, cost = tokens + t, cost + c
            seeded = await self._seed(
                keys=[quota, held, unseeded],
                args=[tokens, durable.extra_tokens, cost, _ttl(period_end), before],
            )
            if seeded:
                return
        raise RedisError("the quota key could not be seeded: settles kept arriving")

    async def _undrained(
        self, user_id: uuid.UUID, period_start: datetime
    ) -> dict[uuid.UUID, tuple[int, int]]:
        """The period's settlements still in the stream (drained or not): id -> tokens, cost."""
        user, period = str(user_id), period_start.isoformat()
        found: dict[uuid.UUID, tuple[int, int]] = {}
        start = "-"
        while True:
            page: Any = await self._redis.xrange(self.stream, min=start, count=_PAGE)
            for _, fields in page:
                if fields and fields.get("u") == user and fields.get("p") == period:
                    found[uuid.UUID(fields["r"])] = (int(fields["t"]), int(fields["c"]))
            if len(page) < _PAGE:
                return found
            start = "(" + page[-1][0]

    async def settle(
        self,
        reservation: Reservation,
        handle: object,
        *,
        used_tokens: int,
        used_cost_nanos: int,
        record: dict[str, Any] | None = None,
    ) -> SettleResult:
        """Replace the reservation by actual usage, once per reservation id, and append the
        settlement with its ``record`` to the settle stream in the same script: one atomic
        Redis step; the drainer writes it to the database (a duplicate appends nothing: the
        first settle's entry is in the stream or already drained)."""
        r = reservation
        quota, held, rate = _keys(r.user_id, r.period_start)
        entry = entry_fields(
            Settlement(
                r.id, r.user_id, r.period_start, r.period_end, used_tokens, used_cost_nanos, record
            )
        )
        removed = await self._settle(
            keys=[
                quota,
                held,
                rate,
                f"kiban:settled:{{{r.user_id}}}:{r.id.hex}",
                quota + ":unseeded",
                self.stream,
            ],
            args=[
                _member(r),
                used_tokens,
                used_cost_nanos,
                max(r.tokens - used_tokens, 0),
                r.window,
                r.tokens,
                r.cost_nanos,
                int(SETTLEMENT_RETENTION.total_seconds()),
                _ttl(r.period_end),
                *(item for pair in entry.items() for item in pair),
            ],
        )
        return "duplicate" if removed == -1 else "settled" if removed else "late"

    async def take_key_window(
        self, api_key_id: uuid.UUID, tokens: int, window: int
    ) -> KeyWindow | None:
        """API key limits live in the database (one conditional UPDATE, keys with limits only)."""
        return await self._db.take_key_window(api_key_id, tokens, window)

    async def state(self, user_id: uuid.UUID, period_start: datetime) -> QuotaState:
        """The period's current counters (zeros when nothing was used yet)."""
        quota, _, rate = _keys(user_id, period_start)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(quota, "used", "reserved", "extra", "used_cost", "reserved_cost")
            pipe.hmget(rate, "window", "requests", "tokens")
            q, w = await pipe.execute()
        if q[0] is None:
            durable = await self._db.state(user_id, period_start)
            q = [durable.used_tokens, 0, durable.extra_tokens, durable.used_cost_nanos, 0]
        n = [int(x or 0) for x in (*q, *w)]
        return QuotaState(*n)

    async def set_extra_tokens(
        self, user_id: uuid.UUID, period_start: datetime, period_end: datetime, extra: int
    ) -> None:
        """Grant ``extra`` tokens on top of the plan for this period (replaces earlier grants)."""
        await self._db.set_extra_tokens(user_id, period_start, period_end, extra)
        await self._set_extra(keys=_keys(user_id, period_start)[:1], args=[extra])

    async def extra_tokens_changed(
        self, user_id: uuid.UUID, period_start: datetime, extra: int
    ) -> None:
        """Mirror a grant written to the database into the live key (if the key exists)."""
        await self._set_extra(keys=_keys(user_id, period_start)[:1], args=[extra])

    async def release_expired(self, now: datetime) -> int:
        """Expired reservations are released by each reserve script; the database keeps only the
        durable copy's settlements, forgotten after ``SETTLEMENT_RETENTION``."""
        await self._db.purge_settlements(now)
        return 0

    async def close(self) -> None:
        """Drain the settle stream (bounded), then close Redis and the database."""
        await self.drainer.close()
        await self._redis.aclose()
        await self._db.close()
