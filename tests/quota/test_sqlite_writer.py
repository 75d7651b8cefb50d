"""SQLite's one writer: transactions asked for together share a hop, each still on its own."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

from kiban.core.db import create_engine
from kiban.quota.store.sqlite_fast_path import RawSqlite


def _insert(value: int, fail: bool = False) -> Callable[[sqlite3.Connection], int]:
    def work(db: sqlite3.Connection) -> int:
        db.execute("INSERT INTO t (v) VALUES (?)", (value,))
        if fail:
            raise ValueError(f"work {value} failed")
        return value

    return work


async def test_a_batch_commits_each_transaction_on_its_own(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    raw = RawSqlite(engine)
    try:
        await raw.in_one_hop(lambda db: db.execute("CREATE TABLE t (v INTEGER)"))
        # Asked for together: they wait for one hop, and the failing one fails alone.
        outcomes = await asyncio.gather(
            *(raw.in_one_hop(_insert(v, fail=v % 7 == 3)) for v in range(50)),
            return_exceptions=True,
        )
        failed = [v for v, o in enumerate(outcomes) if isinstance(o, ValueError)]
        assert failed == [v for v in range(50) if v % 7 == 3]
        assert [o for o in outcomes if not isinstance(o, Exception)] == [
            v for v in range(50) if v % 7 != 3
        ]
        stored = await raw.in_one_hop(
            lambda db: [r[0] for r in db.execute("SELECT v FROM t ORDER BY v")]
        )
        assert stored == [v for v in range(50) if v % 7 != 3]  # the failed ones rolled back
    finally:
        await raw.close()
        await engine.dispose()


async def test_a_cancelled_caller_s_transaction_still_runs(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    raw = RawSqlite(engine)
    try:
        await raw.in_one_hop(lambda db: db.execute("CREATE TABLE t (v INTEGER)"))
        tasks = [asyncio.create_task(raw.in_one_hop(_insert(v))) for v in range(10)]
        await asyncio.sleep(0)
        tasks[4].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert tasks[4].cancelled()
        await raw.close()  # waits for what was asked for
        count = await raw.in_one_hop(lambda db: db.execute("SELECT count(*) FROM t").fetchone())
        assert count[0] == 10
    finally:
        await raw.close()
        await engine.dispose()
