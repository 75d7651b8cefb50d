"""The SQL statements of the database quota store (SQLAlchemy Core, both dialects).

Built once per store and executed with bound parameters: see ``store.sql`` for how they are
used and ``docs/decisions/0030`` and ``0031`` for why they look like this.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Integer,
    Table,
    Uuid,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    not_,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.core import clock
from kiban.models import UsageRecord
from kiban.models.base import UTCDateTime
from kiban.models.quota import ApiKeyLimit, QuotaPeriod, QuotaReservation, QuotaSettlement
from kiban.quota.store.base import QuotaState
from kiban.usage import UPSERTS

K = cast(Table, ApiKeyLimit.__table__)
P = cast(Table, QuotaPeriod.__table__)
R = cast(Table, QuotaReservation.__table__)
S = cast(Table, QuotaSettlement.__table__)
U = cast(Table, UsageRecord.__table__)
STATE_COLUMNS = (
    P.c.used_tokens,
    P.c.reserved_tokens,
    P.c.extra_tokens,
    P.c.used_cost_nanos,
    P.c.reserved_cost_nanos,
    P.c.window_start,
    P.c.window_requests,
    P.c.window_tokens,
)


def big(name: str) -> Any:
    return bindparam(name, type_=BigInteger)


def take_statement() -> Any:
    """The conditional UPDATE that takes a reservation; matches no row when it does not fit."""
    n, c, w, clim, tpm = big("n"), big("c"), big("w"), big("clim"), big("tpm")
    same_window = P.c.window_start == w
    return (
        update(P)
        .where(
            P.c.user_id == bindparam("uid", type_=Uuid()),
            P.c.period_start == bindparam("ps", type_=UTCDateTime()),
            P.c.used_tokens + P.c.reserved_tokens + n <= big("lim") + P.c.extra_tokens,
            or_(clim < 0, P.c.used_cost_nanos + P.c.reserved_cost_nanos + c <= clim),
            or_(P.c.window_start != w, P.c.window_requests < bindparam("rpm", type_=Integer)),
            or_(tpm < 0, case((same_window, P.c.window_tokens), else_=0) + n <= tpm),
        )
        .values(
            reserved_tokens=P.c.reserved_tokens + n,
            reserved_cost_nanos=P.c.reserved_cost_nanos + c,
            window_requests=case((same_window, P.c.window_requests + 1), else_=1),
            window_tokens=case((same_window, P.c.window_tokens + n), else_=n),
            window_start=w,
            updated_at=bindparam("now", type_=UTCDateTime()),
        )
        .returning(P.c.id, *STATE_COLUMNS)
    )


def key_window_statement() -> Any:
    """One UPDATE that checks and takes an API key's window, and records whether it refused."""
    n, w = big("n"), big("w")
    same_window = K.c.window_start == w
    allowed = and_(
        or_(
            K.c.requests_per_minute.is_(None),
            K.c.window_start != w,
            K.c.window_requests < K.c.requests_per_minute,
        ),
        or_(
            K.c.tokens_per_minute.is_(None),
            case((same_window, K.c.window_tokens), else_=0) + n <= K.c.tokens_per_minute,
        ),
    )
    return (
        update(K)
        .where(K.c.api_key_id == bindparam("k", type_=Uuid()))
        .values(
            window_requests=case(
                (allowed, case((same_window, K.c.window_requests + 1), else_=1)),
                else_=K.c.window_requests,
            ),
            window_tokens=case(
                (allowed, case((same_window, K.c.window_tokens + n), else_=n)),
                else_=K.c.window_tokens,
            ),
            window_start=case((allowed, w), else_=K.c.window_start),
            last_refused=not_(allowed),
            updated_at=bindparam("now", type_=UTCDateTime()),
        )
        .returning(
            K.c.requests_per_minute,
            K.c.tokens_per_minute,
            K.c.window_start,
            K.c.window_requests,
            K.c.window_tokens,
            K.c.last_refused,
        )
    )


def settle_values(held_tokens: Any, held_cost: Any, release: Any) -> dict[str, Any]:
    return {
        "used_tokens": P.c.used_tokens + big("ut"),
        "used_cost_nanos": P.c.used_cost_nanos + big("uc"),
        "reserved_tokens": P.c.reserved_tokens - held_tokens,
        "reserved_cost_nanos": P.c.reserved_cost_nanos - held_cost,
        # Give back the unused part of the reservation to this minute's token window.
        "window_tokens": case(
            (
                P.c.window_start == big("w"),
                case((P.c.window_tokens > release, P.c.window_tokens - release), else_=0),
            ),
            else_=P.c.window_tokens,
        ),
        "updated_at": bindparam("now", type_=UTCDateTime()),
    }


def record_settlement(dialect: str) -> Any:
    """INSERT the reservation's id into the settlements unless it is there; RETURNING it when new.

    The first statement of every settle: no row back means this reservation was settled before.
    """
    dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        dialect_insert(S)
        .values(id=bindparam("rid", type_=Uuid()), created_at=bindparam("now", type_=UTCDateTime()))
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(S.c.id)
    )


def state_of(row: Any) -> QuotaState:
    return QuotaState(
        used_tokens=row.used_tokens,
        reserved_tokens=row.reserved_tokens,
        extra_tokens=row.extra_tokens,
        used_cost_nanos=row.used_cost_nanos,
        reserved_cost_nanos=row.reserved_cost_nanos,
        window=row.window_start,
        window_requests=row.window_requests,
        window_tokens=row.window_tokens,
    )


def create_period(
    dialect: str, user_id: uuid.UUID, period_start: datetime, period_end: datetime, now: datetime
) -> Any:
    """INSERT the user's period row unless it exists (both databases: ON CONFLICT DO NOTHING)."""
    dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        dialect_insert(P)
        .values(
            user_id=user_id,
            period_start=period_start,
            period_end=period_end,
            used_tokens=0,
            reserved_tokens=0,
            extra_tokens=0,
            used_cost_nanos=0,
            reserved_cost_nanos=0,
            window_start=0,
            window_requests=0,
            window_tokens=0,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["user_id", "period_start"])
    )


async def grant_in_session(
    session: AsyncSession,
    user_id: uuid.UUID,
    period_start: datetime,
    period_end: datetime,
    extra: int,
) -> None:
    """Set the period's extra tokens inside the caller's transaction (an admin's request)."""
    now = clock.now()
    dialect = session.get_bind().dialect.name
    await session.execute(create_period(dialect, user_id, period_start, period_end, now))
    await session.execute(
        update(P)
        .where(P.c.user_id == user_id, P.c.period_start == period_start)
        .values(extra_tokens=extra, updated_at=now)
    )


def pg_statements(take: Any) -> tuple[Any, Any]:
    """PostgreSQL's reserve and settle, each ONE statement through data-modifying CTEs."""
    taken = take.cte("taken")
    record = insert(R).from_select(
        ["id", "period_id", "tokens", "cost_nanos", "expires_at", "created_at"],
        select(
            bindparam("rid", type_=Uuid()),
            taken.c.id,
            big("n"),
            big("c"),
            bindparam("exp", type_=UTCDateTime()),
            bindparam("now", type_=UTCDateTime()),
        ),
    )
    reserve = select(taken).add_cte(record.cte("recorded"))
    return reserve, pg_settle()


def pg_settle(record_columns: Sequence[str] = (), rollup_rows: Sequence[int] = ()) -> Any:
    """PostgreSQL's settle: ONE statement through data-modifying CTEs, returning the number of
    holds it freed (NULL: this reservation was settled before, and nothing was written).

    Record the reservation's id (nothing more happens if it was settled before), free its hold
    if it has not expired, add the usage. With ``record_columns``, the call's ledger record
    (parameters ``r_<column>``) and its rollup rows (``rollup_rows[t]`` rows for the t-th table
    of ``UPSERTS``, parameters ``u<t>_<i>_<column>``) are written by the same statement, each
    only if the settlement is new: one round trip instead of a transaction of seven.
    """
    recorded = record_settlement("postgresql").cte("recorded")
    first_time = exists(select(recorded.c.id))
    released = (
        delete(R)
        .where(R.c.id == bindparam("rid", type_=Uuid()), first_time)
        .returning(R.c.tokens, R.c.cost_nanos)
        .cte("released")
    )
    held_t = func.coalesce(select(released.c.tokens).scalar_subquery(), 0)
    held_c = func.coalesce(select(released.c.cost_nanos).scalar_subquery(), 0)
    held = select(func.count()).select_from(released).scalar_subquery()
    settle = (
        update(P)
        .where(P.c.id == big("pid"), first_time)
        .values(**settle_values(held_t, held_c, big("rel") * held))
        .returning(held)
        .add_cte(recorded)
        .add_cte(released)
    )
    if record_columns:
        ledger = insert(U).from_select(
            list(record_columns),
            select(*(bindparam(f"r_{c}", type_=U.c[c].type) for c in record_columns)).where(
                first_time
            ),
        )
        settle = settle.add_cte(ledger.cte("ledger"))
    for t, (table, keys, figures) in enumerate(UPSERTS):
        count = rollup_rows[t] if rollup_rows else 0
        if not count:
            continue
        names = (*keys, *figures)
        rows = [
            select(*(bindparam(f"u{t}_{i}_{n}", type_=table.c[n].type) for n in names)).where(
                first_time
            )
            for i in range(count)
        ]
        upsert = pg_insert(table).from_select(
            list(names), rows[0] if count == 1 else union_all(*rows)
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=list(keys),
            set_={n: table.c[n] + upsert.excluded[n] for n in figures},
        )
        settle = settle.add_cte(upsert.cte(f"rollup{t}"))
    return settle


def pg_settle_params(
    params: dict[str, Any], record: dict[str, Any], rollups: Sequence[Sequence[dict[str, Any]]]
) -> dict[str, Any]:
    """``pg_settle``'s parameters for a record and its rollup rows (``rollup_rows([record])``)."""
    bound = dict(params)
    bound.update({f"r_{c}": v for c, v in record.items()})
    for t, rows in enumerate(rollups):
        for i, row in enumerate(rows):
            bound.update({f"u{t}_{i}_{n}": v for n, v in row.items()})
    return bound
