"""Quota state in the database: one conditional UPDATE takes quota and rate window together.

The statement (on the user's ``quota_periods`` row)::

    UPDATE quota_periods SET reserved_tokens = reserved_tokens + :n, window_requests = ...
     WHERE user_id = :u AND period_start = :p
       AND used_tokens + reserved_tokens + :n <= :limit + extra_tokens
       AND <cost budget> AND <requests in this minute < rpm> AND <tokens in this minute>

either matches the row (taken) or matches nothing (refused: a follow-up read says why). Row
locking makes it atomic on PostgreSQL; SQLite runs one writer at a time. Each reservation also
gets a ``quota_reservations`` row with an expiry, in the same transaction, so that a reservation
whose process died is released (``release_expired``) and never locks a user out. A settle first
records the reservation's id in ``quota_settlements`` (same transaction): a retried settle finds
it there and changes nothing.

PostgreSQL does reserve and settle in ONE statement each (data-modifying CTEs, autocommit): one
round trip. SQLite, which has no DML in CTEs, runs the same steps inside ``BEGIN IMMEDIATE``.
The store has its own small connection pool, so a burst of requests that hold the app's
connections can never starve the quota path.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Any, cast

from sqlalchemy import (
    Table,
    Uuid,
    bindparam,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from kiban.core import clock
from kiban.core.db import create_sessionmaker, sqlite_pragmas
from kiban.core.metrics import LEDGER_WRITTEN
from kiban.models import UsageRecord
from kiban.models.base import UTCDateTime
from kiban.quota.store.base import (
    SETTLEMENT_RETENTION,
    KeyWindow,
    QuotaState,
    RefusalReason,
    Reservation,
    ReserveOutcome,
    SettleResult,
    refusal,
)
from kiban.quota.store.sql_statements import (
    STATE_COLUMNS,
    P,
    R,
    S,
    big,
    create_period,
    key_window_statement,
    pg_settle,
    pg_settle_params,
    pg_statements,
    record_settlement,
    settle_values,
    state_of,
    take_statement,
)
from kiban.quota.store.sqlite_fast_path import KeyRow, RawSqlite, TakenRow
from kiban.usage import UPSERTS, rollup_rows, upsert_statement

_MAX_ATTEMPTS = 4
_LEDGER_DEFAULTS = {
    column.name: cast(Any, column.default).arg
    for column in cast(Table, UsageRecord.__table__).columns
    if column.default is not None and column.default.is_scalar
}


class SqlQuotaStore:
    """Quota state in SQLite or PostgreSQL (see the module docstring)."""

    def __init__(self, engine: AsyncEngine, transient: AsyncEngine | None = None) -> None:
        self._owned = engine
        self.dialect: str = engine.dialect.name
        # Reservations and rate windows are transient: if the database server crashes they are
        # worth nothing anyway, so on PostgreSQL they commit without waiting for the WAL flush
        # (``synchronous_commit=off``: an fsync per request saved). Settlements, which record
        # usage, commit durably, and a durable commit also flushes every earlier one.
        self._transient_owned = transient
        self._transient = (transient or engine).execution_options(isolation_level="AUTOCOMMIT")
        # Every statement commits on its own unless a write transaction is opened explicitly
        # (a no-op when the engine was created in autocommit mode, as ``from_url`` does).
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        # Sessions for the hot path's reads (entitlements): no BEGIN/COMMIT round trips.
        self.read_sessions = create_sessionmaker(self._transient)
        self._pg = engine.dialect.name == "postgresql"
        self._take = take_statement()
        self._take_key = key_window_statement()
        self._get_state = select(P.c.id, *STATE_COLUMNS).where(
            P.c.user_id == bindparam("uid", type_=Uuid()),
            P.c.period_start == bindparam("ps", type_=UTCDateTime()),
        )
        self._insert_reservation = insert(R)
        self._delete_reservation = (
            delete(R)
            .where(R.c.id == bindparam("rid", type_=Uuid()))
            .returning(R.c.tokens, R.c.cost_nanos)
        )
        self._record_settlement = record_settlement(engine.dialect.name)
        self._settle_sqlite = (
            update(P)
            .where(P.c.id == big("pid"))
            .values(**settle_values(big("held_t"), big("held_c"), big("rel")))
        )
        if self._pg:
            self._reserve_pg, self._settle_pg = pg_statements(self._take)
            # The settle with a record, one statement per shape (the record's columns, the
            # number of rows per rollup table).
            self._settle_pg_shapes: dict[tuple[Any, ...], Any] = {}
        else:
            self._raw = RawSqlite(self._engine)

    @classmethod
    def from_url(cls, database_url: str, *, pool_size: int = 5) -> SqlQuotaStore:
        """A store with its own pool on the app's database."""
        url = make_url(database_url)
        # Autocommit at the engine, so that checkouts do not switch isolation levels back and
        # forth (each switch is a thread hop on aiosqlite).
        if url.get_backend_name() == "sqlite":
            engine = create_async_engine(
                url,
                isolation_level="AUTOCOMMIT",
                connect_args={"timeout": 30},
                pool_size=pool_size,
                max_overflow=0,
                # Autocommit leaves nothing to roll back at check-in; skipping the reset saves a
                # thread hop per use (a failed explicit transaction rolls back itself).
                pool_reset_on_return=None,
            )
            event.listen(engine.sync_engine, "connect", sqlite_pragmas)
            return cls(engine)
        # No pre-ping: it would cost a round trip per request; a dropped connection is
        # invalidated by the pool on its first error.
        options: dict[str, Any] = {
            "isolation_level": "AUTOCOMMIT",
            "pool_size": pool_size,
            "max_overflow": pool_size,
            "pool_reset_on_return": None,
        }
        transient = create_async_engine(
            url, connect_args={"server_settings": {"synchronous_commit": "off"}}, **options
        )
        return cls(create_async_engine(url, **options), transient)

    @asynccontextmanager
    async def write_transaction(
        self, isolation: str = "READ COMMITTED"
    ) -> AsyncIterator[AsyncConnection]:
        """A write transaction that takes SQLite's write lock up front (no upgrade deadlock).

        ``isolation`` is PostgreSQL's; SQLite's ``BEGIN IMMEDIATE`` is serializable anyway.
        """
        if self._pg:
            async with self._owned.connect() as conn:
                await conn.execution_options(isolation_level=isolation)
                async with conn.begin():
                    yield conn
            return
        async with self._engine.connect() as conn:
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                try:
                    await conn.exec_driver_sql("ROLLBACK")
                except Exception:  # (a cancelled statement) never hide the original error
                    await conn.invalidate()
                raise
            await conn.exec_driver_sql("COMMIT")

    # --- reserve -------------------------------------------------------------------------------

    async def reserve(self, reservation: Reservation) -> ReserveOutcome:
        """Take the reservation atomically, or say why it does not fit."""
        r = reservation
        params = {
            "uid": r.user_id,
            "ps": r.period_start,
            "n": r.tokens,
            "c": r.cost_nanos,
            "lim": r.token_limit,
            "clim": -1 if r.cost_limit_nanos is None else r.cost_limit_nanos,
            "rpm": r.requests_per_minute,
            "tpm": -1 if r.tokens_per_minute is None else r.tokens_per_minute,
            "w": r.window,
            "now": r.now,
            "rid": r.id,
            "exp": r.expires_at,
        }
        released_expired = False
        state, reason = QuotaState(), None
        for _ in range(_MAX_ATTEMPTS):
            row = await self._try_take(params)
            if row is not None:
                return ReserveOutcome(state=state_of(row), handle=row.id)
            # Refused, or the period row does not exist yet: read why (off the hot path).
            async with self._transient.connect() as conn:
                current = (await conn.execute(self._get_state, params)).first()
                if current is None:
                    await self._create_period(conn, r.user_id, r.period_start, r.period_end, r.now)
                    continue
            state = state_of(current)
            reason = refusal(r, state)
            if reason is None:
                continue  # the row changed between the two statements: try again
            if reason in ("quota", "cost") and not released_expired:
                released_expired = True
                if await self._release_expired(r.now, period_id=current.id):
                    continue
            return ReserveOutcome(state=state, refused=reason)
        # Contention so heavy that four attempts saw the row change each time: refuse softly.
        return ReserveOutcome(state=state, refused=reason or "rate_requests")

    async def _try_take(self, params: dict[str, Any]) -> Any:
        if self._pg:
            async with self._transient.connect() as conn:
                return (await conn.execute(self._reserve_pg, params)).first()
        take = self._raw.prepare("take", self._take)
        record = self._raw.prepare("record", self._insert_reservation)
        # Bound here, run in one hop (RawSqlite.in_one_hop); period_id comes from the take.
        take_args = take.bind(params)
        record_params = {
            "id": params["rid"],
            "period_id": 0,
            "tokens": params["n"],
            "cost_nanos": params["c"],
            "expires_at": params["exp"],
            "created_at": params["now"],
        }
        period_at = list(record.names).index("period_id")

        def work(db: sqlite3.Connection) -> TakenRow | None:
            rows = db.execute(take.sql, take_args).fetchall()
            if not rows:
                return None
            row = TakenRow(*rows[0])
            args = list(record.bind(record_params))
            args[period_at] = row.id
            db.execute(record.sql, args).fetchall()
            return row

        return await self._raw.in_one_hop(work)

    async def _create_period(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        period_start: datetime,
        period_end: datetime,
        now: datetime,
    ) -> None:
        dialect = "postgresql" if self._pg else "sqlite"
        await conn.execute(create_period(dialect, user_id, period_start, period_end, now))

    # --- settle --------------------------------------------------------------------------------

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
        write that ledger record and its rollups in the same transaction (a duplicate settle
        writes nothing: its record was written with the first)."""
        params: dict[str, Any] = {
            "rid": reservation.id,
            "pid": handle,
            "ut": used_tokens,
            "uc": used_cost_nanos,
            "rel": max(reservation.tokens - used_tokens, 0),
            "w": reservation.window,
            "now": clock.now(),
        }
        if self._pg:
            if record is not None:
                return await self._settle_and_record_pg(params, record)
            async with self._engine.connect() as conn:
                held = (await conn.execute(self._settle_pg, params)).scalar()
            return "duplicate" if held is None else "settled" if held else "late"
        recorded = self._raw.prepare("record_settlement", self._record_settlement)
        release = self._raw.prepare("release", self._delete_reservation)
        settle = self._raw.prepare("settle", self._settle_sqlite)
        record_args, release_args = recorded.bind(params), release.bind(params)
        ledger = self._ledger_writes(record) if record is not None else []

        def work(db: sqlite3.Connection) -> SettleResult:
            if not db.execute(recorded.sql, record_args).fetchall():
                return "duplicate"  # its record, if any, was written with the first
            held = db.execute(release.sql, release_args).fetchall()
            params["held_t"] = held[0][0] if held else 0
            params["held_c"] = held[0][1] if held else 0
            if not held:
                params["rel"] = 0
            db.execute(settle.sql, settle.bind(params)).fetchall()
            for sql, rows in ledger:
                db.executemany(sql, rows)
            return "settled" if held else "late"

        # One hop for the whole transaction, the ledger record included (RawSqlite.in_one_hop).
        result = await self._raw.in_one_hop(work)
        if record is not None and result != "duplicate":
            LEDGER_WRITTEN.inc()
        return result

    def _ledger_writes(self, record: dict[str, Any]) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The record's rollups and its ledger row as raw SQLite statements and their rows."""
        writes: list[tuple[str, list[tuple[Any, ...]]]] = []
        for (table, keys, figures), rows in zip(UPSERTS, rollup_rows([record]), strict=True):
            if rows:
                upsert = self._raw.prepare_once(
                    f"rollup:{table.name}",
                    partial(upsert_statement, "sqlite", table, keys, figures),
                )
                writes.append((upsert.sql, [upsert.bind_typed(row) for row in rows]))
        # Bound by hand, not through SQLAlchemy's execution: the columns' Python-side defaults
        # (a column the record does not name) are filled in here, as an ORM insert would.
        record = {**_LEDGER_DEFAULTS, **record}
        columns = tuple(record)
        insert_record = self._raw.prepare_once(
            f"ledger:{','.join(columns)}",
            lambda: insert(UsageRecord).values({c: bindparam(c) for c in columns}),
        )
        writes.append((insert_record.sql, [insert_record.bind_typed(record)]))
        return writes

    async def _settle_and_record_pg(
        self, params: dict[str, Any], record: dict[str, Any]
    ) -> SettleResult:
        """The settle, its ledger record and its rollups in ONE statement (``pg_settle``)."""
        rollups = rollup_rows([record])
        shape = (tuple(record), tuple(len(rows) for rows in rollups))
        statement = self._settle_pg_shapes.get(shape)
        if statement is None:
            statement = self._settle_pg_shapes[shape] = pg_settle(*shape)
        async with self._engine.connect() as conn:  # autocommit: the statement is the transaction
            held = (
                await conn.execute(statement, pg_settle_params(params, record, rollups))
            ).scalar()
        if held is None:
            return "duplicate"  # its record was written with the first
        LEDGER_WRITTEN.inc()
        return "settled" if held else "late"

    # --- expiry, reads, grants -----------------------------------------------------------------

    async def release_expired(self, now: datetime) -> int:
        """Release reservations whose process never settled them (returns how many), and forget
        settlements older than ``SETTLEMENT_RETENTION``."""
        released = await self._release_expired(now)
        await self.purge_settlements(now)
        return released

    async def purge_settlements(self, now: datetime) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(delete(S).where(S.c.created_at < now - SETTLEMENT_RETENTION))

    async def _release_expired(self, now: datetime, *, period_id: int | None = None) -> int:
        condition = R.c.expires_at <= now
        if period_id is not None:
            condition = condition & (R.c.period_id == period_id)
        async with self.write_transaction() as conn:
            rows = (
                await conn.execute(
                    delete(R).where(condition).returning(R.c.period_id, R.c.tokens, R.c.cost_nanos)
                )
            ).all()
            totals: dict[int, list[int]] = {}
            for row in rows:
                total = totals.setdefault(row.period_id, [0, 0])
                total[0] += row.tokens
                total[1] += row.cost_nanos
            if totals:
                await conn.execute(
                    update(P)
                    .where(P.c.id == big("pid"))
                    .values(
                        reserved_tokens=P.c.reserved_tokens - big("t"),
                        reserved_cost_nanos=P.c.reserved_cost_nanos - big("c"),
                    ),
                    [{"pid": pid, "t": t, "c": c} for pid, (t, c) in totals.items()],
                )
        return len(rows)

    async def take_key_window(
        self, api_key_id: uuid.UUID, tokens: int, window: int
    ) -> KeyWindow | None:
        """Count a request in the key's own window if it has limits; None when it has none."""
        params = {"k": api_key_id, "n": tokens, "w": window, "now": clock.now()}
        row: Any
        if self._pg:
            async with self._transient.connect() as conn:
                row = (await conn.execute(self._take_key, params)).first()
        else:
            async with self._raw.connection() as raw:
                rows = await self._raw.rows(raw, self._raw.prepare("key", self._take_key), params)
            row = KeyRow(*rows[0]) if rows else None
        if row is None:
            return None
        refused: RefusalReason | None = None
        if row.last_refused:
            rpm = row.requests_per_minute
            full = rpm is not None and row.window_start == window and row.window_requests >= rpm
            refused = "rate_requests" if full else "rate_tokens"
        return KeyWindow(
            requests_per_minute=row.requests_per_minute,
            tokens_per_minute=row.tokens_per_minute,
            window=row.window_start,
            window_requests=row.window_requests,
            window_tokens=row.window_tokens,
            refused=refused,
        )

    async def state(self, user_id: uuid.UUID, period_start: datetime) -> QuotaState:
        """The period's current counters (zeros when nothing was used yet)."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(self._get_state, {"uid": user_id, "ps": period_start})
            ).first()
        return state_of(row) if row is not None else QuotaState()

    async def used(self, user_id: uuid.UUID, period_start: datetime) -> tuple[int, int]:
        """Tokens and nano-USD used in the period, as the database records them."""
        state = await self.state(user_id, period_start)
        return state.used_tokens, state.used_cost_nanos

    async def set_extra_tokens(
        self, user_id: uuid.UUID, period_start: datetime, period_end: datetime, extra: int
    ) -> None:
        """Grant ``extra`` tokens on top of the plan for this period (replaces earlier grants)."""
        async with self.write_transaction() as conn:
            await self._create_period(conn, user_id, period_start, period_end, clock.now())
            await conn.execute(
                update(P)
                .where(P.c.user_id == user_id, P.c.period_start == period_start)
                .values(extra_tokens=extra, updated_at=clock.now())
            )

    async def extra_tokens_changed(
        self, user_id: uuid.UUID, period_start: datetime, extra: int
    ) -> None:
        """Nothing to do: the database row is the authority."""

    async def start(self) -> None:
        """Nothing runs in the background of the database store (the sweeper is the app's)."""

    async def close(self) -> None:
        if not self._pg:
            await self._raw.close()
        await self._owned.dispose()
        if self._transient_owned is not None:
            await self._transient_owned.dispose()
