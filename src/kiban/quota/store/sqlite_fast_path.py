"""SQLite's hot path: the quota statements through the aiosqlite connection directly.

Every call into aiosqlite is a hop to its thread and back, and SQLAlchemy's cursor protocol costs
three or four of them per statement (cursor, execute, fetch, close), plus one to reset the
connection when it returns to the pool. Under load each hop costs far more than the statement
itself. Here the same SQLAlchemy Core statements, compiled once by the engine's dialect, run
with ``execute_fetchall``: one hop per statement; and a reserve or a settle is one
``BEGIN IMMEDIATE`` transaction run whole on the connection's thread: one hop (``in_one_hop``).

Parameters are converted the way SQLAlchemy stores them on SQLite (UUIDs as 32 hex characters,
UTC datetimes as naive ``YYYY-MM-DD HH:MM:SS.ffffff``), so rows written either way compare equal.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.compiler import Compiled

T = TypeVar("T")


def _utc_text(value: datetime) -> str:
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


# By exact type: most parameters are ints and strings, which pass through untouched.
_CONVERT: dict[type, Callable[[Any], Any]] = {
    uuid.UUID: lambda v: v.hex,
    datetime: _utc_text,
    bool: int,
}


def _value(value: Any) -> Any:
    convert = _CONVERT.get(type(value))
    return value if convert is None else convert(value)


class Prepared:
    """A Core statement compiled once for SQLite, bound positionally at each call."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        self.compiled: Compiled = statement.compile(dialect=dialect)
        self.sql = self.compiled.string
        self.names: Sequence[str] = getattr(self.compiled, "positiontup", None) or ()

    def bind(self, params: dict[str, Any]) -> tuple[Any, ...]:
        try:  # every parameter given by name: the common case, without SQLAlchemy's generic pass
            return tuple([_value(params[name]) for name in self.names])
        except KeyError:  # a literal the statement holds itself
            values = self.compiled.construct_params(params) or {}
            return tuple(_value(values[name]) for name in self.names)

    def bind_typed(self, params: dict[str, Any]) -> tuple[Any, ...]:
        """Bound through the columns' own types (JSON, Numeric, UTC datetimes, UUIDs), as
        SQLAlchemy would: for rows other code reads back through the ORM (the ledger)."""
        try:
            values = [params[name] for name in self.names]
        except KeyError:
            given = self.compiled.construct_params(params) or {}
            values = [given[name] for name in self.names]
        return tuple(
            [v if p is None else p(v) for p, v in zip(self._processors, values, strict=True)]
        )

    @functools.cached_property
    def _processors(self) -> list[Callable[[Any], Any] | None]:
        processors = self.compiled._bind_processors  # type: ignore[attr-defined]
        return [processors.get(name) for name in self.names]


def _transactions(
    raw: Any, works: Sequence[Callable[[sqlite3.Connection], Any]]
) -> tuple[list[tuple[bool, Any]], bool]:
    """On the writer's thread: each ``work`` in its own transaction, in order; each one's result
    or exception, and whether a failed ROLLBACK left the connection mid-transaction (the calls
    after it then fail with that error, unrun)."""
    db: sqlite3.Connection = raw._conn
    outcomes: list[tuple[bool, Any]] = []
    for work in works:
        try:
            db.execute("BEGIN IMMEDIATE")  # may fail alone (another process holds the lock)
        except Exception as e:
            outcomes.append((False, e))
            continue
        try:
            result = work(db)
            db.execute("COMMIT")
        except BaseException as e:
            try:
                db.execute("ROLLBACK")
            except Exception:
                outcomes += [(False, e)] * (len(works) - len(outcomes))
                return outcomes, True
            outcomes.append((False, e))
        else:
            outcomes.append((True, result))
    return outcomes, False


class RawSqlite:
    """Transactions and statements on the store's own aiosqlite connections."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._prepared: dict[str, Prepared] = {}
        self._writer: AsyncConnection | None = None
        self._raw_writer: Any = None  # its aiosqlite connection
        self._opening = asyncio.Lock()
        # Transactions waiting for the writer's thread, and the task taking them there.
        self._queued: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._hops: asyncio.Task[None] | None = None

    def prepare_once(self, name: str, build: Callable[[], Any]) -> Prepared:
        """``prepare``, building the statement only the first time ``name`` is asked for."""
        prepared = self._prepared.get(name)
        return prepared if prepared is not None else self.prepare(name, build())

    def prepare(self, name: str, statement: Any) -> Prepared:
        prepared = self._prepared.get(name)
        if prepared is None:
            prepared = self._prepared[name] = Prepared(statement, self._engine.dialect)
        return prepared

    async def in_one_hop(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` inside ``BEGIN IMMEDIATE`` … ``COMMIT`` on the writer's thread.

        Statement by statement, a reserve or a settle cost four thread hops (BEGIN, two
        statements, COMMIT), and under load each hop waits for a core; here the whole transaction
        is one function on the connection's own thread (aiosqlite's ``_execute``, the call its
        public methods are built on). ``work`` only runs statements on the connection it is given.

        Every write transaction of this process goes to ONE connection, in the order asked for
        (a cancelled caller's transaction still runs whole). SQLite has one write lock per file:
        several connections of one process would take turns at it through the busy handler,
        which sleeps up to 100 ms between tries (measured: p50 217 ms at 32 connections, 128
        requests/s). Other processes on the file still meet this one at the lock.

        Transactions asked for while a hop is on the thread go together in the next one, each
        still its own ``BEGIN IMMEDIATE`` … ``COMMIT``: under load, one wake-up of the thread
        and one of the event loop serve many calls instead of two each.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((work, future))
        if self._hops is None:
            self._hops = asyncio.create_task(self._run_hops())
        return await future

    async def _run_hops(self) -> None:
        """Send what is queued to the writer's thread, one batch per hop, until nothing is."""
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    raw = await self._writer_connection()
                    outcomes, stuck = await raw._execute(
                        functools.partial(_transactions, raw, [work for work, _ in batch])
                    )
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as e:  # no connection: every call in the batch failed unrun
                    outcomes, stuck = [(False, e)] * len(batch), False
                if stuck:
                    await self._drop_writer()  # never reuse a connection left mid-transaction
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():  # its caller was cancelled (the transaction still ran)
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._hops = None

    async def _writer_connection(self) -> Any:
        if self._writer is not None and self._raw_writer is not None:
            return self._raw_writer
        async with self._opening:
            if self._writer is None:
                writer = await self._engine.connect()
                raw = (await writer.get_raw_connection()).driver_connection
                assert raw is not None
                self._writer, self._raw_writer = writer, raw
        return self._raw_writer

    async def _drop_writer(self) -> None:
        writer, self._writer, self._raw_writer = self._writer, None, None
        if writer is not None:
            await writer.invalidate()
            await writer.close()

    async def close(self) -> None:
        """Give the writer connection back (before the engine is disposed), once the
        transactions already asked for have run."""
        if self._hops is not None:
            await asyncio.shield(self._hops)
        writer, self._writer, self._raw_writer = self._writer, None, None
        if writer is not None:
            await writer.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """An aiosqlite connection in autocommit mode (each statement commits on its own)."""
        async with self._engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            yield raw

    @staticmethod
    async def rows(raw: Any, prepared: Prepared, params: dict[str, Any]) -> list[Any]:
        return list(await raw.execute_fetchall(prepared.sql, prepared.bind(params)))


class TakenRow(NamedTuple):
    """A row of the raw SQLite path, named like the RETURNING clause of ``take_statement``."""

    id: int
    used_tokens: int
    reserved_tokens: int
    extra_tokens: int
    used_cost_nanos: int
    reserved_cost_nanos: int
    window_start: int
    window_requests: int
    window_tokens: int


class KeyRow(NamedTuple):
    """A row of the raw SQLite path, named like the RETURNING clause of the key window."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    window_start: int
    window_requests: int
    window_tokens: int
    last_refused: bool
