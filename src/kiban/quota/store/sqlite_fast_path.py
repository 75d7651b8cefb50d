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
        # An INSERT's columns left out of its values take their scalar Python defaults, as the
        # ORM would give them (an execution context does that; a raw execute does not).
        self.defaults: dict[str, Any] = {
            column.key: column.default.arg
            for column in getattr(self.compiled, "insert_prefetch", None) or ()
            if column.default is not None and column.default.is_scalar
        }

    def bind(self, params: dict[str, Any]) -> tuple[Any, ...]:
        values = self.compiled.construct_params(params) or {}
        return tuple(_value(values[name]) for name in self.names)

    def bind_typed(self, params: dict[str, Any]) -> tuple[Any, ...]:
        """Bound through the columns' own types (JSON, Numeric, UTC datetimes, UUIDs), as
        SQLAlchemy would: for rows other code reads back through the ORM (the ledger)."""
        if self.defaults:
            params = {**self.defaults, **params}
        values = self.compiled.construct_params(params) or {}
        processors = self.compiled._bind_processors  # type: ignore[attr-defined]
        return tuple(
            processors[name](values[name]) if name in processors else values[name]
            for name in self.names
        )


class RawSqlite:
    """Transactions and statements on the store's own aiosqlite connections."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._prepared: dict[str, Prepared] = {}
        self._writer: AsyncConnection | None = None
        self._raw_writer: Any = None  # its aiosqlite connection
        self._opening = asyncio.Lock()

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
        """Run ``work`` inside ``BEGIN IMMEDIATE`` … ``COMMIT`` in ONE trip to the writer's thread.

        Statement by statement, a reserve or a settle cost four thread hops (BEGIN, two
        statements, COMMIT), and under load each hop waits for a core; here the whole transaction
        is one function on the connection's own thread (aiosqlite's ``_execute``, the call its
        public methods are built on). ``work`` only runs statements on the connection it is given.

        Every write transaction of this process goes to ONE connection, whose thread runs them in
        the order they were asked for (aiosqlite's queue is FIFO; a cancelled caller's
        transaction still runs whole). SQLite has one write lock per file: several connections
        of one process would take turns at it through the busy handler, which sleeps up to
        100 ms between tries (measured: p50 217 ms at 32 connections, 128 requests/s). Other
        processes on the file still meet this one at the lock, as SQLite intends.
        """
        raw = await self._writer_connection()

        stuck = False  # a failed ROLLBACK: the connection may still be in a transaction

        def transaction() -> T:
            nonlocal stuck
            db: sqlite3.Connection = raw._conn
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                try:
                    db.execute("ROLLBACK")
                except Exception:
                    stuck = True
                raise
            return result

        try:
            result: T = await raw._execute(transaction)
        except BaseException:
            if stuck:
                await self._drop_writer()  # never reuse a connection left mid-transaction
            raise
        return result

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
        """Give the writer connection back (before the engine is disposed)."""
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
