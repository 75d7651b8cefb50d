"""Admin analytics over a large usage ledger: how long the summary and its friends take.

    python bench/analytics_summary.py                   # SQLite, 1,000,000 rows
    python bench/analytics_summary.py --postgres        # PostgreSQL too (KIBAN_TEST_DATABASE_URL
                                                        # or postgresql+asyncpg://postgres@127.0.0.1/test)
    python bench/analytics_summary.py --rows 200000 --repeat 3

It builds a ledger of ``--rows`` records over 30 days from 1,000 users (a scratch SQLite file, or
a scratch PostgreSQL database that is dropped afterwards), backfills the rollups with migration
0008 (timed), then prints the median time of each
query, and the ratio to a baseline measured in the same run: a plain indexed ``count(*)`` over
the same window. It also checks the summary's percentiles against a plain ``ORDER BY ... OFFSET``
and times that naive way, and streams the CSV export of the whole ledger to measure its memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from kiban.admin import analytics, quotas, top_users, usage_log
from kiban.admin.analytics import Window
from kiban.admin.schemas import GroupBy, Interval, RankBy
from kiban.billing.plans import DEFAULT_PLANS_FILE, load_catalog
from kiban.core.db import create_engine, create_sessionmaker, session_scope
from kiban.core.migrations import upgrade
from kiban.models import UsageRecord, User
from kiban.usage import nearest_rank, rollups

END = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 30
USERS = 1_000
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "extractive")
ENDPOINTS = ("ai_test", "ai_stream", "chat_completions")
STATUSES = (("ok", 85), ("no_context", 5), ("error", 4), ("cancelled", 2), ("rejected", 4))
COLUMNS = (
    "request_id", "created_at", "user_id", "plan", "endpoint", "model", "provider", "streamed",
    "status", "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens",
    "estimated_cost", "response_time_ms", "time_to_first_token_ms", "prompt_text",
)  # fmt: skip


def rows(n: int, users: list[uuid.UUID], seed: int = 1) -> Any:
    """Ledger rows as tuples of COLUMNS (Python values; each backend converts them)."""
    rnd = random.Random(seed)
    start = END - timedelta(days=DAYS)
    names, weights = zip(*STATUSES, strict=True)
    # In time order, as the ledger writer inserts them: ids grow with created_at.
    offsets = sorted(rnd.random() * DAYS * 86400 for _ in range(n))
    for i, offset in enumerate(offsets):
        status = rnd.choices(names, weights)[0]
        prompt, completion = rnd.randint(10, 3000), rnd.randint(0, 1000)
        model = rnd.choice(MODELS)
        streamed = rnd.random() < 0.5
        latency = rnd.lognormvariate(6, 1)
        yield (
            f"bench-{i}",
            start + timedelta(seconds=offset),
            rnd.choice(users),
            rnd.choice(("free", "pro")),
            rnd.choice(ENDPOINTS),
            model,
            "extractive" if model == "extractive" else "openai",
            streamed,
            status,
            prompt,
            completion,
            prompt + completion,
            0,
            None if model == "extractive" else Decimal(prompt * 15 + completion * 60) / 10**8,
            latency,
            latency / 4 if streamed else None,
            "What does the contract say about termination?" * 4,
        )


async def build(url: str, n: int) -> None:
    engine = create_engine(url)
    # The schema before the rollups; migration 0008 then backfills them from the ledger, as it
    # does when an existing install upgrades (timed below).
    await upgrade(engine, "0007")
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session:
        users = [User(email=f"bench-{i}@example.com", password_hash="x") for i in range(USERS)]
        session.add_all(users)
        await session.commit()
        ids = [u.id for u in users]
    started = time.perf_counter()
    if url.startswith("sqlite"):
        _insert_sqlite(make_url(url).database or "", n, ids)
    else:
        await _insert_postgres(url, n, ids)
    print(f"  built {n:,} rows in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    await upgrade(engine)
    print(f"  migrations 0008-0009 backfilled the rollups in {time.perf_counter() - started:.1f} s")
    async with engine.begin() as conn:  # planner statistics for the new tables
        await conn.execute(text("ANALYZE"))
    await engine.dispose()


def _insert_sqlite(path: str, n: int, ids: list[uuid.UUID]) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")

    def convert(row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        values[1] = values[1].replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        values[2] = values[2].hex
        values[13] = float(values[13]) if values[13] is not None else None
        return tuple(values)

    marks = ", ".join("?" * len(COLUMNS))
    con.executemany(
        f"INSERT INTO usage_records ({', '.join(COLUMNS)}) VALUES ({marks})",
        (convert(r) for r in rows(n, ids)),
    )
    con.commit()
    con.execute("ANALYZE")
    con.close()


async def _insert_postgres(url: str, n: int, ids: list[uuid.UUID]) -> None:
    import asyncpg

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        batch: list[tuple[Any, ...]] = []
        for row in rows(n, ids):
            batch.append(row)
            if len(batch) == 50_000:
                await conn.copy_records_to_table("usage_records", records=batch, columns=COLUMNS)
                batch = []
        if batch:
            await conn.copy_records_to_table("usage_records", records=batch, columns=COLUMNS)
        await conn.execute("VACUUM ANALYZE usage_records")
    finally:
        await conn.close()


async def median_ms(fn: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, Any]:
    await fn()  # warm the caches: we measure queries, not the first disk read
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = await fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


async def measure(url: str, repeat: int, export: bool) -> None:
    engine = create_engine(url)
    sessionmaker = create_sessionmaker(engine)
    month = Window(END - timedelta(days=DAYS), END)
    day = Window(END - timedelta(days=1), END)
    async with sessionmaker() as session:

        async def baseline() -> Any:
            query = select(func.count()).select_from(UsageRecord).where(*month.filters())
            return (await session.execute(query)).scalar()

        base, total = await median_ms(baseline, repeat)
        print(f"  baseline count(*) over 30 days ({total:,} rows): {base:8.1f} ms")
        cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("summary, 30 days (all rows)", lambda: analytics.summary(session, month)),
            ("summary, last 24 hours", lambda: analytics.summary(session, day)),
            (
                "timeseries, 30 days per day",
                lambda: analytics.timeseries(session, month, Interval.DAY, None),
            ),
            (
                "timeseries, 24 h per hour and model",
                lambda: analytics.timeseries(session, day, Interval.HOUR, GroupBy.MODEL),
            ),
            (
                "top users by cost, 30 days",
                lambda: top_users.top_users(session, month, RankBy.COST, 10),
            ),
            ("model mix, 30 days", lambda: analytics.mix(session, month, GroupBy.MODEL)),
            (
                "quota consumption per plan",
                lambda: quotas.quota_consumption(
                    session, END, load_catalog(DEFAULT_PLANS_FILE), timedelta(days=7)
                ),
            ),
        ]
        summary = None
        for name, fn in cases:
            ms, result = await median_ms(fn, repeat)
            summary = summary or result
            print(f"  {name:<38} {ms:8.1f} ms   {ms / base:6.1f}x baseline")
        naive_ms, exact = await median_ms(lambda: naive_percentiles(session, month), 1)
        got = (summary.latency_p50_ms, summary.latency_p95_ms, summary.latency_p99_ms)
        verdict = "equal" if got == exact else f"DIFFERENT: {got} != {exact}"
        print(f"  naive ORDER BY/OFFSET percentiles       {naive_ms:8.1f} ms   (results {verdict})")
    await measure_writes(engine)
    if export:
        await measure_export(engine, month)
    await engine.dispose()


async def measure_writes(engine: Any, batches: int = 40, size: int = 500) -> None:
    """What the rollups add to the ledger writer's batch: the same insert, with and without them.

    Batches alternate (with, without) so both see the same load; their rows land after the
    measured month. The batches written without rollups leave this scratch ledger and its
    rollups apart, which is why this runs last.
    """
    users = [uuid.uuid4() for _ in range(USERS)]
    sessionmaker = create_sessionmaker(engine)
    generated = rows(batches * size, users, seed=2)
    times: dict[bool, list[float]] = {True: [], False: []}
    async with sessionmaker() as session:
        session.add_all(User(id=u, email=f"w-{u}@example.com", password_hash="x") for u in users)
        await session.commit()
    for i in range(batches):
        batch = [dict(zip(COLUMNS, next(generated), strict=True)) for _ in range(size)]
        for record in batch:
            record["created_at"] += timedelta(days=DAYS + 1)
        with_rollups = i % 2 == 0
        started = time.perf_counter()
        async with session_scope(sessionmaker) as session:
            if with_rollups:
                await rollups.add(session, batch)
            await session.execute(insert(UsageRecord), batch)
        times[with_rollups].append(time.perf_counter() - started)
    plain, rolled = (statistics.median(times[k]) * 1000 for k in (False, True))
    print(
        f"  ledger batch of {size}: {plain:.1f} ms without rollups, {rolled:.1f} ms with"
        f" ({rolled / plain:.2f}x)"
    )


async def naive_percentiles(session: AsyncSession, window: Window) -> tuple[float, ...]:
    """p50/p95/p99 the obvious way: count, then ORDER BY value OFFSET rank - 1 for each."""
    column = UsageRecord.response_time_ms
    filters = [*window.filters(), UsageRecord.status != "rejected"]
    n = (await session.execute(select(func.count()).where(*filters))).scalar_one()
    values = []
    for p in (50, 95, 99):
        query = select(column).where(*filters).order_by(column).offset(nearest_rank(p, n) - 1)
        values.append((await session.execute(query.limit(1))).scalar_one())
    return tuple(values)


async def measure_export(engine: Any, window: Window) -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started, size, chunks = time.perf_counter(), 0, 0
    async for chunk in usage_log.export_csv(engine, window):
        size += len(chunk)
        chunks += 1
    seconds = time.perf_counter() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    print(
        f"  CSV export of the 30 days: {size / 1e6:,.0f} MB in {seconds:.1f} s, {chunks:,} chunks;"
        f" peak RSS grew by {grown:,.1f} MB"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres", action="store_true", help="also measure PostgreSQL")
    parser.add_argument("--postgres-only", action="store_true")
    parser.add_argument("--no-export", action="store_true", help="skip the CSV export")
    args = parser.parse_args()
    print(f"analytics over {args.rows:,} ledger rows (median of {args.repeat})")
    if not args.postgres_only:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{tmp}/bench.db"
            print("SQLite")
            await build(url, args.rows)
            await measure(url, args.repeat, not args.no_export)
    if args.postgres or args.postgres_only:
        base = os.environ.get(
            "KIBAN_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        )
        name = f"kiban_bench_{uuid.uuid4().hex[:8]}"
        admin = create_async_engine(make_url(base), isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
            if os.environ.get("BENCH_PG_JIT") == "off":
                await conn.execute(text(f'ALTER DATABASE "{name}" SET jit = off'))
        url = make_url(base).set(database=name).render_as_string(hide_password=False)
        try:
            print("PostgreSQL")
            await build(url, args.rows)
            await measure(url, args.repeat, not args.no_export)
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await admin.dispose()


if __name__ == "__main__":
    asyncio.run(main())
