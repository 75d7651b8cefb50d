"""What quota enforcement adds to one AI request: admit + settle, per backend.

Runs ``QuotaAdmission.admit`` then ``settle`` (what the gateway does around each provider call)
N times for one user, against ``OpenAdmission`` (no enforcement) as the baseline measured in the
same run, on SQLite, and on PostgreSQL and Redis when their URLs are given. Prints p50/p99 in
microseconds and the added p50; then the same under concurrency (C tasks) as operations/s.

    python bench/quota_overhead.py [--n 2000] [--concurrency 32] \\
        [--pg postgresql+asyncpg://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/0]

``--pg`` and ``--redis`` default to ``KIBAN_TEST_DATABASE_URL`` and ``KIBAN_TEST_REDIS_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from kiban.auth.dependencies import Principal
from kiban.billing.plans import parse_plans
from kiban.core.db import create_engine, create_sessionmaker
from kiban.core.migrations import upgrade
from kiban.gateway.admission import AdmissionRequest, OpenAdmission, Usage
from kiban.models import User
from kiban.quota import QuotaAdmission
from kiban.quota.store import RedisQuotaStore, SqlQuotaStore

PLANS = """
default_plan = "bench"
[plans.bench]
monthly_tokens = 1_000_000_000_000
requests_per_minute = 1_000_000_000
models = ["*"]
max_tokens = 256
max_prompt_tokens = 100_000
[plans.bench.documents]
max_documents = 1
max_document_bytes = 1
max_total_bytes = 1
"""


async def prepare(url: str) -> User:
    engine = create_engine(url)
    await upgrade(engine)
    async with create_sessionmaker(engine)() as session:
        user = User(email=f"bench-{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        session.add(user)
        await session.commit()
    await engine.dispose()
    return user


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


async def measure(
    admission: Any, user: User, n: int, concurrency: int
) -> tuple[list[float], float]:
    request = AdmissionRequest(Principal(user), "chat_completions", "gpt-4o-mini", 40, 64)
    usage = Usage(40, 20, None)

    async def once() -> float:
        started = time.perf_counter()
        ticket = await admission.admit(request)
        await admission.settle(ticket, usage)
        return time.perf_counter() - started

    for _ in range(50):  # warm up pools and statement caches
        await once()
    latencies = [await once() for _ in range(n)]

    async def worker(count: int) -> None:
        for _ in range(count):
            await once()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    rate = (n // concurrency) * concurrency / (time.perf_counter() - started)
    return latencies, rate


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    # Defaults: the test suite's servers, when they are configured.
    parser.add_argument("--pg", default=os.environ.get("KIBAN_TEST_DATABASE_URL"))
    parser.add_argument("--redis", default=os.environ.get("KIBAN_TEST_REDIS_URL"))
    args = parser.parse_args()
    catalog = parse_plans(PLANS)
    rows: list[tuple[str, list[float], float]] = []

    baseline_user = User(id=uuid.uuid4(), email="x", password_hash="x")
    rows.append(
        (
            "open (baseline)",
            *await measure(OpenAdmission(), baseline_user, args.n, args.concurrency),
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        targets: list[tuple[str, str, str | None]] = [
            ("sqlite", f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", None)
        ]
        scratch = None
        if args.pg:
            scratch = f"kiban_bench_{uuid.uuid4().hex[:8]}"
            admin = create_async_engine(args.pg, isolation_level="AUTOCOMMIT")
            async with admin.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{scratch}"'))
            await admin.dispose()
            pg_url = args.pg.rsplit("/", 1)[0] + f"/{scratch}"
            targets.append(("postgresql", pg_url, None))
            if args.redis:
                targets.append(("redis (+pg copy)", pg_url, args.redis))
        try:
            for name, url, redis_url in targets:
                user = await prepare(url)
                sql = SqlQuotaStore.from_url(url)
                store: Any = RedisQuotaStore.from_urls(redis_url, url) if redis_url else sql
                admission = QuotaAdmission(store, catalog, store.read_sessions)
                rows.append((name, *await measure(admission, user, args.n, args.concurrency)))
                await store.close()
                if redis_url:
                    await sql.close()
        finally:
            if scratch:
                admin = create_async_engine(args.pg, isolation_level="AUTOCOMMIT")
                async with admin.connect() as conn:
                    await conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
                await admin.dispose()

    base = statistics.median(rows[0][1])
    print(f"admit + settle, n={args.n} sequential; throughput with {args.concurrency} tasks")
    print(f"{'backend':<18}{'p50 µs':>10}{'p99 µs':>10}{'added p50 µs':>14}{'ops/s':>10}")
    for name, latencies, rate in rows:
        p50 = statistics.median(latencies)
        print(
            f"{name:<18}{p50 * 1e6:>10.0f}{percentile(latencies, 0.99) * 1e6:>10.0f}"
            f"{(p50 - base) * 1e6:>14.0f}{rate:>10.0f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
