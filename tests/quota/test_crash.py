"""kill -9 under load: every answered request has its ledger record, and quota equals the ledger.

A real kiban process (uvicorn on a served port) answers concurrent chat completions, and refuses
those of a user over quota (429), and is killed with SIGKILL mid-load: no shutdown, no flush. It
is then restarted on the same database (and Redis), which drains what the dead process left in
Redis's settle stream, and stopped. Whatever a client received as a 200 or a 429 must then be in
the ledger, once, and the quota's durable ``used`` must equal the ledger's tokens (requests in
flight at the kill hold reservations, which expire; they were answered to no one).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from kiban.core.db import create_engine
from kiban.models import QuotaPeriod, UsageRecord, UsageStatus
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

[plans.tiny]
monthly_tokens = 10
requests_per_minute = 1_000_000
models = ["*"]
max_tokens = 20
max_prompt_tokens = 2_000

[plans.tiny.documents]
max_documents = 1
max_document_bytes = 1000
max_total_bytes = 1000
"""
CLIENTS = 16
REFUSED_CLIENTS = 4  # a user over quota: every request a 429 (recorded before it is sent)
ENOUGH = 100  # answered requests before the kill: well into the load


async def _load(
    url: str,
    headers: dict[str, str],
    seen: list[str],
    enough: asyncio.Event,
    status: int = 200,
) -> None:
    """One client posting chat completions until the server is gone; the ids answered
    ``status``."""
    payload = {"model": "gpt-4o-mini", "messages": QUESTION, "max_tokens": 20}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while True:
            try:
                response = await client.post("/v1/chat/completions", json=payload, headers=headers)
            except httpx.TransportError:
                return  # the server is gone
            if response.status_code == status:
                seen.append(response.headers["x-request-id"])
                if len(seen) >= ENOUGH:
                    enough.set()


async def _drained(redis_url: str, stream: str) -> None:
    """Wait until the settle stream is empty (the restarted process drained it)."""
    redis = Redis.from_url(redis_url)
    try:
        for _ in range(600):
            if await redis.xlen(stream) == 0:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{stream} was not drained")
    finally:
        await redis.aclose()


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
        # The longest linger: a refusal whose response did not wait for its commit would be lost.
        "KIBAN_LEDGER_FLUSH_INTERVAL_SECONDS": "0.1",
        # The dead process's unacknowledged stream entries are taken over soon after restart.
        "KIBAN_QUOTA_STREAM_CLAIM_IDLE_SECONDS": "1",
        "OPENAI_API_KEY": "sk-test-upstream",
        "OPENAI_BASE_URL": quota_upstream.base_url,
    }
    if "redis_url" in quota_backend:
        env["KIBAN_REDIS_URL"] = quota_backend["redis_url"]
        env["KIBAN_QUOTA_SETTLE_STREAM"] = quota_backend["quota_settle_stream"]
    else:
        env.pop("KIBAN_REDIS_URL", None)
    user = await insert_user(database_url)
    over_quota = await insert_user(database_url, plan="tiny")
    settings: Settings = make_settings(plans_file=plans, **quota_backend)

    server = Server(env, tmp_path)
    answered: list[str] = []
    refused: list[str] = []
    try:
        server.wait_ready()
        enough, some_refused = asyncio.Event(), asyncio.Event()
        clients = [
            asyncio.create_task(_load(server.url, token_for(settings, user.id), answered, enough))
            for _ in range(CLIENTS)
        ]
        clients += [
            asyncio.create_task(
                _load(server.url, token_for(settings, over_quota.id), refused, some_refused, 429)
            )
            for _ in range(REFUSED_CLIENTS)
        ]
        # Killed once well into both loads: a run where the answers came first had no 429 yet.
        await asyncio.wait_for(asyncio.gather(enough.wait(), some_refused.wait()), timeout=120)
        server.kill()
        await asyncio.gather(*clients)
    finally:
        server.stop()
    assert len(answered) >= ENOUGH
    assert refused

    # Restarted on the same database (and Redis): it drains what the dead process left there.
    restarted = Server(env, tmp_path)
    try:
        restarted.wait_ready()
        if "redis_url" in quota_backend:
            await _drained(quota_backend["redis_url"], quota_backend["quota_settle_stream"])
    finally:
        restarted.stop()

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
            refusals = list(
                (
                    await conn.execute(
                        select(UsageRecord.request_id).where(
                            UsageRecord.user_id == over_quota.id,
                            UsageRecord.status == UsageStatus.REJECTED,
                        )
                    )
                ).scalars()
            )
    finally:
        await engine.dispose()
    twice = len(recorded) - len(set(recorded))
    missing = set(answered) - set(recorded)
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no record"
    assert twice == 0
    assert used == ledger_tokens > 0
    unrecorded = set(refused) - set(refusals)
    assert not unrecorded, f"{len(unrecorded)} of {len(refused)} 429s have no record"
    assert len(refusals) == len(set(refusals))
