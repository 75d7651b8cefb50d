"""kill -9 under load: every answered request has its ledger record, and quota equals the ledger.

A real kiban process (uvicorn on a served port) answers concurrent chat completions and is
killed with SIGKILL mid-load: no shutdown, no flush. Whatever a client received as a 200 must
then be in the ledger, once, and the quota's durable ``used`` must equal the ledger's tokens
(requests in flight at the kill hold reservations, which expire; they were answered to no one).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from kiban.core.db import create_engine
from kiban.models import QuotaPeriod, UsageRecord
from kiban.settings import Settings
from tests.conftest import TEST_SECRET
from tests.quota.conftest import insert_user
from tests.quota.test_quota_two_processes import QUESTION, token_for
from tests.served import Server

pytestmark = [pytest.mark.timeout(300)]

LOAD_PLANS = """
default_plan = "load"

[plans.load]
monthly_tokens = 1_000_000_000
requests_per_minute = 1_000_000
models = ["*"]
max_tokens = 20
max_prompt_tokens = 2_000

[plans.load.documents]
max_documents = 1
max_document_bytes = 1000
max_total_bytes = 1000
"""
CLIENTS = 16
ENOUGH = 100  # answered requests before the kill: well into the load


async def _load(
    url: str, headers: dict[str, str], answered: list[str], enough: asyncio.Event
) -> None:
    """One client posting chat completions until the server is gone; the ids answered 200."""
    payload = {"model": "gpt-4o-mini", "messages": QUESTION, "max_tokens": 20}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while True:
            try:
                response = await client.post("/v1/chat/completions", json=payload, headers=headers)
            except httpx.TransportError:
                return  # the server is gone
            if response.status_code == 200:
                answered.append(response.headers["x-request-id"])
                if len(answered) >= ENOUGH:
                    enough.set()


async def test_kill_9_under_load_loses_no_answered_request(
    database_url: str,
    quota_backend: dict[str, Any],
    quota_upstream: Any,
    make_settings: Any,
    tmp_path: Path,
) -> None:
    plans = tmp_path / "plans.toml"
    plans.write_text(LOAD_PLANS)
    env = {
        **os.environ,
        "KIBAN_ENV": "test",
        "KIBAN_DATABASE_URL": database_url,
        "KIBAN_SECRET_KEY": TEST_SECRET,
        "KIBAN_PLANS_FILE": str(plans),
        "KIBAN_QUOTA_BACKEND": quota_backend["quota_backend"],
        "KIBAN_DEV_SECRET_FILE": str(tmp_path / ".kiban-secret"),
        # The slowest flush: anything left to the buffered writer would be lost by the kill.
        "KIBAN_LEDGER_FLUSH_INTERVAL_SECONDS": "0.9",
        "OPENAI_API_KEY": "sk-test-upstream",
        "OPENAI_BASE_URL": quota_upstream.base_url,
    }
    if "redis_url" in quota_backend:
        env["KIBAN_REDIS_URL"] = quota_backend["redis_url"]
    else:
        env.pop("KIBAN_REDIS_URL", None)
    user = await insert_user(database_url)
    settings: Settings = make_settings(plans_file=plans, **quota_backend)
    headers = token_for(settings, user.id)

    server = Server(env, tmp_path)
    answered: list[str] = []
    try:
        server.wait_ready()
        enough = asyncio.Event()
        clients = [
            asyncio.create_task(_load(server.url, headers, answered, enough))
            for _ in range(CLIENTS)
        ]
        await asyncio.wait_for(enough.wait(), timeout=120)
        server.kill()
        await asyncio.gather(*clients)
    finally:
        server.stop()
    assert len(answered) >= ENOUGH

    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            mine = UsageRecord.user_id == user.id
            ids = (await conn.execute(select(UsageRecord.request_id).where(mine))).scalars()
            recorded = list(ids)
            ledger_tokens = (
                await conn.execute(select(func.sum(UsageRecord.total_tokens)).where(mine))
            ).scalar()
            used = (
                await conn.execute(
                    select(func.sum(QuotaPeriod.used_tokens)).where(QuotaPeriod.user_id == user.id)
                )
            ).scalar()
    finally:
        await engine.dispose()
    twice = len(recorded) - len(set(recorded))
    missing = set(answered) - set(recorded)
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no record"
    assert twice == 0
    assert used == ledger_tokens > 0
