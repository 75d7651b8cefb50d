"""Async SQLAlchemy engine and sessions, for SQLite (WAL) and PostgreSQL.

The request is the unit of work: ``SessionDep`` yields one session, services ``flush()``, and the
session commits once when the endpoint returns (or rolls back when it raises), before the response
is sent. Code outside a request (the ledger writer, the CLI) uses ``session_scope``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def create_engine(database_url: str, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    """An engine configured for the database behind the URL."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(
            url, echo=echo, connect_args={"timeout": 30}, pool_size=pool_size, max_overflow=0
        )
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        event.listen(engine.sync_engine, "savepoint", _sqlite_begin_before_savepoint)
        return engine
    return create_async_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


SQLITE_MMAP_BYTES = 1 << 30  # address space, not memory: pages are the OS cache's, shared


def sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    # WAL lets readers proceed while one writer commits; busy_timeout waits instead of failing
    # with "database is locked" when two writers meet.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # Read the file through a memory map (shared by every connection, no read() call per page):
    # a 100,000-chunk index searched from the OS cache page by page took twice as long.
    cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
    cursor.close()


def _sqlite_begin_before_savepoint(connection: Connection, name: str | None) -> None:
    # The sqlite3 driver opens its transaction lazily, before the first INSERT/UPDATE/DELETE. A
    # SAVEPOINT issued before any such statement opens a transaction of its own, and its RELEASE
    # then COMMITs: a `begin_nested()` block early in a request would commit the request's work
    # even when the request later fails. Open the real transaction first.
    raw: Any = connection.connection.dbapi_connection
    aio = getattr(raw, "_connection", raw)  # the aiosqlite connection behind SQLAlchemy's adapter
    if not aio.in_transaction:
        connection.exec_driver_sql("BEGIN")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def session_scope(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A unit of work outside a request: commit on success, roll back on error."""
    async with sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session; committed when the endpoint returns, before the response is sent."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with session_scope(sessionmaker) as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
