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

import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.compiler import Compiled

T = TypeVar("T")


def _value(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, bool):
        return int(value)
    return value


class Prepared:
    """A Core statement compiled once for SQLite, bound positionally at each call."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        self.compiled: Compiled = statement.compile(dialect=dialect)
        self.sql = self.compiled.string
        self.names: Sequence[str] = getattr(self.compiled, "positiontup", None) or ()

    def bind(self, params: dict[str, Any]) -> tuple[Any, ...]:
        values = self.compiled.construct_params(params) or {}
        return tuple(_value(values[name]) for name in self.names)

    def bind_typed(self, params: dict[str, Any]) -> tuple[Any, ...]:
        """Bound through the columns' own types (JSON, Numeric, UTC datetimes, UUIDs), as
        SQLAlchemy would: for rows other code reads back through the ORM (the ledger)."""
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
        """Run ``work`` inside ``BEGIN IMMEDIATE`` … ``COMMIT`` in ONE trip to aiosqlite's thread.

        Statement by statement, a reserve or a settle cost four thread hops (BEGIN, two
        statements, COMMIT), and under load each hop waits for a core; here the whole transaction
        is one function on the connection's own thread (aiosqlite's ``_execute``, the call its
        public methods are built on; its queue is FIFO, so the pool's next use of the connection
        runs after the COMMIT even if the awaiting task is cancelled). ``work`` only runs
        statements on the connection it is given.
        """
        async with self._engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None

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
                    await conn.invalidate()  # never hand back a connection mid-transaction
                raise
            return result

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
