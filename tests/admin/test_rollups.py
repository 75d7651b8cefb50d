"""The rollups agree with the ledger: written with each batch, once per batch, and backfilled."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from fastapi import FastAPI
from sqlalchemy import Connection, MetaData, Table, func, insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from kiban.admin import analytics, top_users
from kiban.admin.schemas import RankBy
from kiban.cli import app as cli
from kiban.core.db import create_engine, create_sessionmaker
from kiban.core.migrations import alembic_config, upgrade
from kiban.models import (
    UsageHistogramDaily,
    UsageHistogramHourly,
    UsageRecord,
    UsageRollupHourly,
    UsageRollupUserDaily,
    User,
)
from kiban.usage import EDGES, LedgerWriter, rollups
from tests.admin.conftest import expected_figures
from tests.conftest import TEST_SECRET, create_user
from tests.factories import T0, make_records, write_records

COLUMNS = [c.key for c in UsageRecord.__table__.columns if c.key != "id"]


def as_dicts(records: list[UsageRecord]) -> list[dict[str, Any]]:
    return [{c: getattr(r, c) for c in COLUMNS} for r in records]


def _units(cost: Decimal | None) -> int:
    return int(cost * 10**10) if cost is not None else 0


async def rollups_and_ledger(session: AsyncSession) -> tuple[dict[Any, list[int]], ...]:
    """The rollup tables' contents, and the same figures computed here from the ledger's rows."""
    hourly: dict[Any, list[int]] = {}
    daily: dict[Any, list[int]] = {}
    for r in (await session.execute(select(UsageRecord))).scalars():
        hour = r.created_at.replace(minute=0, second=0, microsecond=0)
        cost = _units(r.estimated_cost)
        unpriced = int(r.estimated_cost is None and r.total_tokens > 0)
        figures = [1, r.prompt_tokens, r.completion_tokens, r.total_tokens, cost, unpriced]
        key = (hour, r.model, r.endpoint, r.status, r.plan or "")
        hourly[key] = [a + b for a, b in zip(hourly.get(key, [0] * 6), figures, strict=True)]
        day_key = (hour.replace(hour=0), r.user_id or uuid.UUID(int=0))
        day = [1, r.total_tokens, cost]
        daily[day_key] = [a + b for a, b in zip(daily.get(day_key, [0] * 3), day, strict=True)]
    R, D = UsageRollupHourly, UsageRollupUserDaily
    got_hourly = {
        (r.hour, r.model, r.endpoint, r.status, r.plan): [
            r.requests,
            r.prompt_tokens,
            r.completion_tokens,
            r.total_tokens,
            r.cost_units,
            r.unpriced,
        ]
        for r in (await session.execute(select(R))).scalars()
    }
    got_daily = {
        (r.day, r.user_id): [r.requests, r.total_tokens, r.cost_units]
        for r in (await session.execute(select(D))).scalars()
    }
    return got_hourly, hourly, got_daily, daily


def _bin(value: float) -> int:
    # Independent of histograms.bin_of (a bisection): count the edges at or below the value.
    return sum(1 for edge in EDGES if edge <= value)


async def histograms_and_ledger(session: AsyncSession) -> tuple[dict[Any, int], dict[Any, int]]:
    """The histogram table's counts, and the same counts computed here from the ledger's rows."""
    want: dict[Any, int] = {}
    for r in (await session.execute(select(UsageRecord))).scalars():
        if r.status == "rejected":
            continue
        hour = r.created_at.replace(minute=0, second=0, microsecond=0)
        values = {"latency": r.response_time_ms, "ttft": r.time_to_first_token_ms}
        for metric, value in values.items():
            if value is not None:
                key = (hour, metric, _bin(value))
                want[key] = want.get(key, 0) + 1
    H, HD = UsageHistogramHourly, UsageHistogramDaily
    got = {(h.hour, h.metric, h.bin): h.count for h in (await session.execute(select(H))).scalars()}
    # The daily table holds the same counts summed per day.
    for d in (await session.execute(select(HD))).scalars():
        got[(d.day, d.metric, d.bin, "day")] = d.count
    for (hour, metric, index), n in list(want.items()):
        day = (hour.replace(hour=0), metric, index, "day")
        want[day] = want.get(day, 0) + n
    return got, want


async def assert_rollups_match_ledger(session: AsyncSession) -> None:
    got_hourly, hourly, got_daily, daily = await rollups_and_ledger(session)
    assert got_hourly == hourly
    assert got_daily == daily
    got_histograms, histograms = await histograms_and_ledger(session)
    assert got_histograms == histograms
    assert histograms  # the ledger had latencies to count


async def test_the_ledger_writer_keeps_the_rollups_equal_to_the_ledger(
    app: FastAPI, session: AsyncSession, user: User, admin: User
) -> None:
    writer = LedgerWriter(app.state.sessionmaker, batch_size=7, flush_interval=0.0)
    writer.start()
    # Two rounds over the same hours: the second one adds to existing rollup rows (the upsert).
    for round_seed in (1, 2):
        for record in as_dicts(
            make_records(60, [user.id, admin.id, None], seed=round_seed, hours=5)
        ):
            writer.submit(record)
        await asyncio.wait_for(writer.flush(), 10)
        await assert_rollups_match_ledger(session)
    await writer.close()
    assert (writer.written, writer.dropped) == (120, 0)


async def test_a_retried_batch_is_counted_once(app: FastAPI, session: AsyncSession) -> None:
    # A real database error after the rollup upsert: the ledger rows reference a user that does
    # not exist (foreign key), so the batch's transaction, rollups included, rolls back; the
    # writer then writes the records one by one (orphans keep user_id NULL). Each record must
    # reach the rollups exactly once.
    missing_user = uuid.uuid4()
    writer = LedgerWriter(app.state.sessionmaker, flush_interval=0.0, max_backoff=0.05)
    writer.start()
    for record in as_dicts(make_records(30, [missing_user], seed=5, hours=3)):
        writer.submit(record)
    await asyncio.wait_for(writer.flush(), 10)
    await writer.close()
    assert (writer.written, writer.dropped) == (30, 0)
    orphans = await session.scalar(
        select(func.count()).select_from(UsageRecord).where(UsageRecord.user_id.is_(None))
    )
    assert orphans == 30
    await assert_rollups_match_ledger(session)
    got = (await session.execute(select(func.sum(UsageRollupHourly.requests)))).scalar()
    assert got == 30


def _downgrade(connection: Connection, target: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, target)


def _value(record: UsageRecord, column: Any) -> Any:
    """A new record's value for a column (its scalar default where the ORM would give it)."""
    value = getattr(record, column.key)
    if value is None and column.default is not None and column.default.is_scalar:
        return column.default.arg
    return value


async def test_the_migration_backfills_the_rollups_from_an_existing_ledger(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_downgrade, "0007")
        sessionmaker = create_sessionmaker(engine)
        async with sessionmaker() as session:
            user = await create_user(session)
            records = make_records(300, [user.id, None], seed=11)
            # Only the columns the table had then (later migrations add some, with defaults).
            existing = await session.run_sync(
                lambda s: {c["name"] for c in inspect(s.connection()).get_columns("usage_records")}
            )
            then = Table(
                "usage_records",
                MetaData(),
                *(c._copy() for c in UsageRecord.__table__.columns if c.key in existing),
            )
            await session.execute(
                insert(then),
                [{c.key: _value(r, c) for c in then.columns if c.key != "id"} for r in records],
            )
            await session.commit()
        await upgrade(engine)
        async with sessionmaker() as session:
            await assert_rollups_match_ledger(session)
            # And the analytics read them: a window of whole hours and partial ones.
            window = analytics.Window(T0 + timedelta(minutes=20), T0 + timedelta(hours=50))
            got = await analytics.summary(session, window)
        inside = [r for r in records if window.start <= r.created_at < window.end]
        want = expected_figures(inside)
        assert got.requests == want["requests"]
        assert got.cost_usd == want["cost_usd"]
        assert got.by_status == want["by_status"]
        assert got.latency_p95_ms == want["latency_p95_ms"]
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("start", "end", "whole"),
    [
        (T0, T0 + timedelta(hours=3), (T0, T0 + timedelta(hours=3))),
        (T0 + timedelta(minutes=1), T0 + timedelta(minutes=59), None),
        (T0 + timedelta(minutes=1), T0 + timedelta(hours=2), (T0 + timedelta(hours=1), None)),
    ],
)
def test_split_cuts_whole_hours_and_edges(start: Any, end: Any, whole: Any) -> None:
    split = rollups.split(start, end, rollups.HOUR)
    if whole is None:
        assert split == rollups.Split(None, [(start, end)])
        return
    first = whole[0]
    last = whole[1] or end
    assert split.whole == (first, last)
    # The edges and the whole part tile the window exactly.
    pieces = sorted([*split.edges, split.whole])
    assert pieces[0][0] == start
    assert pieces[-1][1] == end
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))


async def test_a_deleted_users_usage_ranks_as_no_user_as_in_the_ledger(
    app: FastAPI, session: AsyncSession, user: User
) -> None:
    gone = await create_user(session)
    records = make_records(120, [user.id, gone.id, None], seed=21, hours=72)
    await write_records(session, records)
    await session.delete(gone)  # the ledger keeps the rows, with user_id set to NULL
    await session.commit()
    ragged = analytics.Window(T0 + timedelta(hours=5), T0 + timedelta(days=2, hours=3))
    got = await top_users.top_users(session, ragged, RankBy.REQUESTS, 10)
    want: dict[uuid.UUID | None, int] = {}
    for r in records:
        if ragged.start <= r.created_at < ragged.end:
            key = None if r.user_id == gone.id else r.user_id
            want[key] = want.get(key, 0) + 1
    assert {u.user_id: u.requests for u in got.users} == want


async def test_rebuild_rollups_command_recomputes_them_from_the_ledger(
    app: FastAPI,
    session: AsyncSession,
    user: User,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Ledger rows written around the writer (as a restore would): the rollups miss them ...
    session.add_all(make_records(250, [user.id, None], seed=31))
    await session.commit()
    got_hourly, hourly, _, _ = await rollups_and_ledger(session)
    assert got_hourly != hourly
    monkeypatch.setenv("KIBAN_DATABASE_URL", database_url)
    monkeypatch.setenv("KIBAN_SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("KIBAN_DEV_SECRET_FILE", str(tmp_path / ".kiban-secret"))
    monkeypatch.chdir(tmp_path)  # no stray .env
    # ... until the command rebuilds them (it runs its own event loop: from a thread).
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["admin", "rebuild-rollups"])
    assert result.exit_code == 0, result.output
    assert "rollups rebuilt from 250 ledger records" in result.output
    await session.rollback()  # a fresh snapshot
    await assert_rollups_match_ledger(session)
