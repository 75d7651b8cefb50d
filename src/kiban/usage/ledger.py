"""The usage ledger writer: records refused before admission are committed in groups, and the
request waits for its group's commit (the records of admitted calls ride in their settlement's
transaction instead: decision 0065).

- ``submit`` never blocks and never raises: it enqueues the record (or, queue full, hands it to
  a small task that waits for room, so a burst is absorbed rather than dropped) and returns a
  future that is done once the record is committed (or dropped). ``Call.finish`` awaits it
  before the response is sent, so a client never sees an answer whose record a crash can lose.
- Group commit: one writer task takes everything queued (up to a batch) and inserts it in one
  transaction. When it has been idle it writes at once; right after a write it lingers up to
  ``flush_interval`` (2 ms by default) for more, so under load the records that arrived during
  one commit share the next (a one-record insert costs ~20x a batched one per record).
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
_Pending = tuple[Record, "asyncio.Future[None]"]  # a record and the future its commit completes


class LedgerWriter:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.002,
        put_timeout: float = 30.0,
        max_backoff: float = 5.0,
        shutdown_attempts: int = 5,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_size)
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

    def submit(self, record: Record) -> asyncio.Future[None]:
        """Queue a record for writing; never blocks, never raises. The future is done when the
        record is committed (or, counted and logged, dropped): await it before answering."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed:
            # No writer is left to take it (a stream cancelled at shutdown finishes late): count
            # it and log it whole rather than leave it in a queue nobody reads.
            self._drop([(record, done)], "submitted after shutdown")
            return done
        try:
            self._queue.put_nowait((record, done))
        except asyncio.QueueFull:
            task = asyncio.create_task(self._put_later((record, done)))
            self._waiters.add(task)
            task.add_done_callback(self._waiters.discard)
        LEDGER_QUEUE_DEPTH.set(self._queue.qsize())
        return done

    async def _put_later(self, pending: _Pending) -> None:
        try:
            await asyncio.wait_for(self._queue.put(pending), self._put_timeout)
        except TimeoutError:
            self._drop([pending], "queue full")

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

    async def _fill(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        # Idle: at once. Right after a write: linger a moment for the records still arriving.
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

    async def _write(self, batch: list[_Pending]) -> None:
        delay = 0.05
        attempt = 0
        records = [record for record, _ in batch]
        while True:
            attempt += 1
            try:
                async with session_scope(self._sessionmaker) as session:
                    # Rollups in the same transaction: a failed attempt rolls both back, so a
                    # retried batch is counted once (decision 0055).
                    await write_records(session, records)
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
            _complete(batch)
            return

    async def _isolate(self, batch: list[_Pending], exc: Exception) -> None:
        if len(batch) > 1:
            for pending in batch:
                await self._write([pending])
            return
        record, done = batch[0]
        if isinstance(exc, IntegrityError) and record.get("user_id") is not None:
            # Its user was deleted meanwhile: keep it as ON DELETE SET NULL would have.
            await self._write([({**record, "user_id": None}, done)])
            return
        self._drop(batch, f"rejected by the database: {exc!r}")

    def _drop(self, batch: list[_Pending], reason: str) -> None:
        self.dropped += len(batch)
        LEDGER_DROPPED.inc(len(batch))
        for record, _ in batch:
            log.error(
                "ledger_record_dropped",
                reason=reason,
                record={k: str(v) for k, v in record.items()},
            )
        _complete(batch)


def _complete(batch: list[_Pending]) -> None:
    for _, done in batch:
        if not done.done():
            done.set_result(None)


async def write_records(conn: AsyncSession | AsyncConnection, records: list[Record]) -> None:
    """Insert ledger records and add them to the rollups, in the caller's transaction.

    The quota store calls this in a settlement's transaction (one durable write per finished
    call); the buffered writer, for records with no settlement.
    """
    await rollups.add(conn, records)
    await conn.execute(insert(UsageRecord), records)
