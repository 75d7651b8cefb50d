"""Draining the Redis store's settle stream into the database (the ledger and the durable copy).

The settle script appends each settlement (the reservation id, user, period, tokens, cost and the
call's ledger record) to one stream, in the same atomic step as the settlement itself, so the
response waits for Redis only. Every kiban process runs a ``StreamDrainer``: a consumer of the
group ``kiban-drain`` that

- reads new entries (``XREADGROUP … >``, blocking up to a second when there are none);
- every few seconds takes over entries another consumer left pending past ``claim_idle_ms``
  (``XAUTOCLAIM``: a process that died between reading and acknowledging);
- writes a batch to the database in ONE transaction (``durable_copy.write_settlements``,
  idempotent per reservation id), and only then ``XACK`` + ``XDEL`` in one ``MULTI``: an entry
  is always in the stream, or committed in the database, or both; never neither;
- keeps a batch that failed for a database error and retries it with backoff (the entries stay
  in Redis meanwhile; ``kiban_quota_stream_entries`` shows them); an entry whose user was
  deleted meanwhile keeps its record with no user (as ``ON DELETE SET NULL`` would); one the
  database still refuses (malformed) is logged whole, counted as dropped, and acknowledged, so
  it cannot stall the ones behind it.

On shutdown the drainer drains what is in the stream for it, then leaves the group if it holds
nothing pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy.exc import DataError, IntegrityError

from kiban.core.metrics import LEDGER_DROPPED, QUOTA_STREAM_DRAINED, QUOTA_STREAM_ENTRIES
from kiban.quota.store.durable_copy import Settlement, write_settlements
from kiban.quota.store.sql import SqlQuotaStore
from kiban.usage import record_from_json, record_to_json

log = structlog.get_logger("kiban.quota")

GROUP = "kiban-drain"
Entry = tuple[str, dict[str, str] | None]  # a stream id and its fields (None: deleted meanwhile)
_DEAD_CONSUMER_MS = 3_600_000  # a consumer silent this long, holding nothing, is removed


def entry_fields(settlement: Settlement) -> dict[str, str | bytes]:
    """A settlement as the fields of its stream entry (the settle script's XADD arguments)."""
    return {
        "r": settlement.id.hex,
        "u": str(settlement.user_id),
        "p": settlement.period_start.isoformat(),
        "e": settlement.period_end.isoformat(),
        "t": str(settlement.tokens),
        "c": str(settlement.cost_nanos),
        "rec": b"" if settlement.record is None else record_to_json(settlement.record),
    }


def settlement_of(fields: dict[str, str]) -> Settlement:
    """The settlement a stream entry carries (ValueError or KeyError when it is malformed)."""
    record = fields.get("rec") or ""
    return Settlement(
        id=uuid.UUID(fields["r"]),
        user_id=uuid.UUID(fields["u"]),
        period_start=datetime.fromisoformat(fields["p"]),
        period_end=datetime.fromisoformat(fields["e"]),
        tokens=int(fields["t"]),
        cost_nanos=int(fields["c"]),
        record=record_from_json(record) if record else None,
    )


class StreamDrainer:
    """One process's consumer of the settle stream (see the module docstring)."""

    def __init__(
        self,
        redis: Redis,
        database: SqlQuotaStore,
        stream: str,
        *,
        batch_size: int = 500,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        claim_every: float = 5.0,
        consumer: str | None = None,
    ) -> None:
        self._redis = redis
        self._db = database
        self.stream = stream
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._batch_size = batch_size
        self._block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self._claim_every = claim_every
        self._task: asyncio.Task[None] | None = None
        self._group_ready = False
        self._stopping = False
        self._reading = False  # waiting in XREADGROUP: safe to cancel

    def start(self) -> None:
        """Start draining in the background."""
        self._task = asyncio.create_task(self._run(), name="kiban-quota-stream-drainer")

    async def close(self, grace: float = 10.0) -> None:
        """Stop, drain what the stream holds for this consumer, and leave the group if it holds
        nothing; what cannot be drained in ``grace`` seconds stays in Redis for the next
        process."""
        if self._task is not None:
            # Cancelled while it waits for entries; a batch being written is let finish.
            self._stopping = True
            if self._reading:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.wait_for(self.drain(), grace)
        except Exception as exc:
            log.error("quota_stream_drain_incomplete", stream=self.stream, error=repr(exc))
            return
        with contextlib.suppress(Exception):
            mine = await self._redis.xpending_range(
                self.stream, GROUP, min="-", max="+", count=1, consumername=self.consumer
            )
            if not mine:
                await self._redis.xgroup_delconsumer(self.stream, GROUP, self.consumer)

    # --- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[Entry] = []
        next_claim = 0.0
        delay = 0.05
        while not self._stopping:
            try:
                if not batch:
                    if loop.time() >= next_claim:
                        next_claim = loop.time() + self._claim_every
                        batch = await self.claim()
                    if not batch:
                        self._reading = True
                        try:
                            batch = await self.read(block_ms=self._block_ms)
                        finally:
                            self._reading = False
                    if not batch:
                        QUOTA_STREAM_ENTRIES.set(await self._redis.xlen(self.stream))
                        continue
                await self.drain_entries(batch)
                batch, delay = [], 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database or Redis failing: keep the batch, retry
                task = asyncio.current_task()
                if self._stopping or (task is not None and task.cancelling()):
                    return  # what is left is drained by close() or the next process
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    self._group_ready = False  # the stream vanished (a Redis restart, a flush)
                log.warning(
                    "quota_stream_drain_failed",
                    entries=len(batch),
                    error=repr(exc),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def drain(self, *, claim: bool = False) -> int:
        """Drain everything there is now: this consumer's pending entries, then new ones (and
        with ``claim``, those other consumers left pending past the idle time); returns how
        many entries were drained."""
        drained = 0
        while True:
            batch = await self.read(pending=True)
            if not batch and claim:
                batch = await self.claim()
            if not batch:
                batch = await self.read()
            if not batch:
                QUOTA_STREAM_ENTRIES.set(await self._redis.xlen(self.stream))
                return drained
            await self.drain_entries(batch)
            drained += len(batch)

    async def drain_entries(self, entries: list[Entry]) -> None:
        """Write the entries in one transaction, then acknowledge and delete them."""
        await self.write(entries)
        await self.ack([entry_id for entry_id, _ in entries])

    # --- the steps -----------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From the stream's first entry: what was settled before any drainer ran is drained.
            await self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def read(self, *, pending: bool = False, block_ms: int | None = None) -> list[Entry]:
        """New entries for this consumer (or, with ``pending``, those it read and never
        acknowledged); waits up to ``block_ms`` for some when there are none."""
        await self._ensure_group()
        reply: Any = await self._redis.xreadgroup(
            GROUP,
            self.consumer,
            {self.stream: "0" if pending else ">"},
            count=self._batch_size,
            block=None if pending else block_ms,
        )
        if not reply:
            return []
        return [(entry_id, fields or None) for entry_id, fields in reply[0][1]]

    async def claim(self) -> list[Entry]:
        """Take over entries other consumers left pending past the idle time (a dead process's),
        and remove consumers long silent that hold nothing."""
        await self._ensure_group()
        reply: Any = await self._redis.xautoclaim(
            self.stream,
            GROUP,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=self._batch_size,
        )
        entries: list[Entry] = [(entry_id, fields or None) for entry_id, fields in reply[1]]
        for consumer in await self._redis.xinfo_consumers(self.stream, GROUP):
            name = consumer["name"]
            silent = consumer["idle"] > _DEAD_CONSUMER_MS
            if name != self.consumer and not consumer["pending"] and silent:
                await self._redis.xgroup_delconsumer(self.stream, GROUP, name)
        if entries:
            log.info("quota_stream_entries_claimed", entries=len(entries))
        return entries

    async def write(self, entries: list[Entry]) -> None:
        """The database step alone (no acknowledgement): the settlements in one transaction;
        entries the database refuses as data are set apart, logged and counted as dropped."""
        settlements: list[Settlement] = []
        origin: dict[uuid.UUID, Entry] = {}
        for entry_id, fields in entries:
            if fields is None:
                continue  # deleted from the stream: it was drained before
            try:
                settlement = settlement_of(fields)
            except (KeyError, ValueError) as exc:
                self._drop(entry_id, fields, f"malformed: {exc!r}")
                continue
            settlements.append(settlement)
            origin[settlement.id] = (entry_id, fields)
        await self._write(settlements, origin)

    async def _write(
        self,
        settlements: list[Settlement],
        origin: dict[uuid.UUID, Entry],
        *,
        count_usage: bool = True,
    ) -> None:
        if not settlements:
            return
        try:
            fresh = await write_settlements(self._db, settlements, count_usage=count_usage)
        except (IntegrityError, DataError) as exc:
            if len(settlements) > 1:
                for settlement in settlements:
                    await self._write([settlement], origin)
                return
            settlement = settlements[0]
            record = settlement.record
            if isinstance(exc, IntegrityError) and count_usage:
                # Its user was deleted meanwhile (with the period row): keep the record as
                # ON DELETE SET NULL would have; there is no quota left to count it in.
                orphan = replace(settlement, record=record and {**record, "user_id": None})
                await self._write([orphan], origin, count_usage=False)
                return
            entry_id, fields = origin.get(settlement.id, ("?", None))
            self._drop(entry_id, fields or {}, f"rejected by the database: {exc!r}")
            return
        QUOTA_STREAM_DRAINED.labels("written").inc(len(fresh))
        QUOTA_STREAM_DRAINED.labels("duplicate").inc(len(settlements) - len(fresh))

    async def ack(self, entry_ids: list[str]) -> None:
        """Acknowledge and delete drained entries, atomically (one MULTI)."""
        if not entry_ids:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, GROUP, *entry_ids)
            pipe.xdel(self.stream, *entry_ids)
            pipe.xlen(self.stream)
            *_, left = await pipe.execute()
        QUOTA_STREAM_ENTRIES.set(left)

    def _drop(self, entry_id: str, fields: dict[str, str], reason: str) -> None:
        QUOTA_STREAM_DRAINED.labels("dropped").inc()
        if fields.get("rec"):
            LEDGER_DROPPED.inc()
        log.error("quota_stream_entry_dropped", entry=entry_id, reason=reason, fields=fields)
