"""The usage ledger writer: records leave the request path through a bounded queue and are
inserted in batches by one background task.

- ``submit`` never blocks the request: it enqueues, or (queue full) hands the record to a small
  task that waits for room, so a burst is absorbed rather than dropped.
- The writer takes what is queued (up to a batch) and inserts it in one statement. It writes at
  once when it has been idle for ``flush_interval``; under load it writes at most once per
  ``flush_interval``, so records gather into batches (a one-record insert costs ~20x as much).
- A database error keeps the batch and retries it with exponential backoff (a record the database
  refuses, such as one whose user was deleted meanwhile, is set apart instead); records are never
  dropped while the process lives, except when the queue stays full past ``put_timeout``, the
  database is still failing at shutdown, or a record arrives after ``close()``. Each drop counts
  in ``LEDGER_DROPPED`` and is logged with the record, at error level. That counter stays 0.
- ``flush()`` waits until everything submitted so far is written; ``close()`` flushes and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from sqlalchemy import insert
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from kiban.core.db import session_scope
from kiban.core.metrics import LEDGER_DROPPED, LEDGER_QUEUE_DEPTH, LEDGER_WRITTEN
from kiban.models import UsageRecord
from kiban.usage import rollups

log = structlog.get_logger("kiban.usage.ledger")

Record = dict[str, Any]  # UsageRecord column values


class LedgerWriter:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.25,
        put_timeout: float = 30.0,
        max_backoff: float = 5.0,
        shutdown_attempts: int = 5,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._put_timeout = put_timeout
        self._max_backoff = max_backoff
        self._shutdown_attempts = shutdown_attempts
        self._task: asyncio.Task[None] | None = None
        self._waiters: set[asyncio.Task[None]] = set()
        self._closing = False
        self._closed = False
        self._last_write = 0.0
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        """Start the background writer."""
        self._task = asyncio.create_task(self._run(), name="kiban-ledger-writer")

    def submit(self, record: Record) -> None:
        """Queue a record for writing; never blocks, never raises."""
        if self._closed:
            # No writer is left to take it (a stream cancelled at shutdown finishes late): count
            # it and log it whole rather than leave it in a queue nobody reads.
            self._drop([record], "submitted after shutdown")
            return
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            task = asyncio.create_task(self._put_later(record))
            self._waiters.add(task)
            task.add_done_callback(self._waiters.discard)
        LEDGER_QUEUE_DEPTH.set(self._queue.qsize())

    async def _put_later(self, record: Record) -> None:
        try:
            await asyncio.wait_for(self._queue.put(record), self._put_timeout)
        except TimeoutError:
            self._drop([record], "queue full")

    async def flush(self) -> None:
        """Wait until every record submitted so far is written (or dropped)."""
        while self._waiters:
            await asyncio.gather(*list(self._waiters), return_exceptions=True)
        await self._queue.join()

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.flush(), timeout=self._max_backoff * (self._shutdown_attempts + 2)
            )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        leftover = []
        while not self._queue.empty():
            leftover.append(self._queue.get_nowait())
            self._queue.task_done()
        self._closed = True
        if leftover:
            self._drop(leftover, "shutdown")

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            try:
                await self._fill(batch)
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
                LEDGER_QUEUE_DEPTH.set(self._queue.qsize())

    async def _fill(self, batch: list[Record]) -> None:
        loop = asyncio.get_running_loop()
        deadline = max(loop.time(), self._last_write + self._flush_interval)
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closing:
                return
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                return

    async def _write(self, batch: list[Record]) -> None:
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            try:
                async with session_scope(self._sessionmaker) as session:
                    # The analytics rollups, in the same transaction: a failed attempt rolls
                    # both back, so a retried batch is counted once (decision 0055).
                    # Rollups in the same transaction: a failed attempt rolls both back, so a
                    # retried batch is counted once (decision 0055).
                    await write_records(session, batch)
            except (IntegrityError, DataError) as exc:
                # The data, not the database: retrying the batch would stall every later record
                # behind it. Write the records one by one instead.
                await self._isolate(batch, exc)
                return
            except Exception as exc:
                if self._closing and attempt >= self._shutdown_attempts:
                    self._drop(batch, f"database error at shutdown: {exc!r}")
                    return
                log.warning(
                    "ledger_write_failed",
                    records=len(batch),
                    attempt=attempt,
                    error=repr(exc),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
                continue
            self._last_write = asyncio.get_running_loop().time()
            self.written += len(batch)
            LEDGER_WRITTEN.inc(len(batch))
            return

    async def _isolate(self, batch: list[Record], exc: Exception) -> None:
        if len(batch) > 1:
            for record in batch:
                await self._write([record])
            return
        record = batch[0]
        if isinstance(exc, IntegrityError) and record.get("user_id") is not None:
            # Its user was deleted meanwhile: keep it as ON DELETE SET NULL would have.
            await self._write([{**record, "user_id": None}])
            return
        self._drop(batch, f"rejected by the database: {exc!r}")

    def _drop(self, records: list[Record], reason: str) -> None:
        self.dropped += len(records)
        LEDGER_DROPPED.inc(len(records))
        for record in records:
            log.error(
                "ledger_record_dropped",
                reason=reason,
                record={k: str(v) for k, v in record.items()},
            )


async def write_records(conn: AsyncSession | AsyncConnection, records: list[Record]) -> None:
    """Insert ledger records and add them to the rollups, in the caller's transaction.

    The quota store calls this in a settlement's transaction (one durable write per finished
    call); the buffered writer, for records with no settlement.
    """
    await rollups.add(conn, records)
    await conn.execute(insert(UsageRecord), records)
