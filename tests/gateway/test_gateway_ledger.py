"""The ledger writer and ``GET /ai/logs``."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import httpx
from fastapi import FastAPI

from kiban.core.db import create_engine, create_sessionmaker
from kiban.core.migrations import upgrade
from kiban.models import User
from kiban.usage import LedgerWriter
from tests.conftest import auth_headers, create_user
from tests.factories import ledger, ledger_record

ASK = {"prompt": "Say something.", "grounded": False}


async def test_writer_retries_until_the_database_accepts_the_batch(tmp_path: Path) -> None:
    # A real database error: the table does not exist until the migration runs.
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'late.db'}")
    writer = LedgerWriter(create_sessionmaker(engine), flush_interval=0.0, max_backoff=0.05)
    writer.start()
    writer.submit(ledger_record())
    writer.submit(ledger_record())
    await asyncio.sleep(0.3)
    assert writer.written == 0
    await upgrade(engine)
    await asyncio.wait_for(writer.flush(), 5)
    assert writer.written == 2
    assert writer.dropped == 0
    await writer.close()
    await engine.dispose()


async def test_writer_absorbs_a_burst_larger_than_its_queue(app: FastAPI) -> None:
    writer = LedgerWriter(app.state.sessionmaker, queue_size=5, batch_size=3, flush_interval=0.0)
    writer.start()
    for _ in range(40):
        writer.submit(ledger_record())
    await asyncio.wait_for(writer.flush(), 10)
    await writer.close()
    assert (writer.written, writer.dropped) == (40, 0)


async def test_records_queued_at_shutdown_are_written(app: FastAPI) -> None:
    writer = LedgerWriter(app.state.sessionmaker, flush_interval=10.0)
    writer.start()
    for _ in range(3):
        writer.submit(ledger_record())
    await writer.close()
    assert writer.written == 3
    assert len(await ledger(app)) == 3


async def test_a_record_is_visible_in_logs_within_a_second(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.post("/ai/test", headers=user_headers, json=ASK)
    request_id = response.json()["request_id"]
    started = time.monotonic()
    while True:
        items = (await client.get("/ai/logs", headers=user_headers)).json()["items"]
        if items and items[0]["request_id"] == request_id:
            break
        assert time.monotonic() - started < 1.0, "not visible within 1 s"
        await asyncio.sleep(0.02)


async def test_logs_are_paginated_newest_first_with_filters(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI
) -> None:
    ids = []
    for i in range(5):
        body = {**ASK, "model": "extractive" if i % 2 else "gpt-4o-mini"}
        ids.append(
            (await client.post("/ai/test", headers=user_headers, json=body)).json()["request_id"]
        )
    await ledger(app)
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/ai/logs", headers=user_headers, params=params)).json()
        seen += [item["request_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    only = (
        await client.get(
            "/ai/logs", headers=user_headers, params={"model": "extractive", "status": "no_context"}
        )
    ).json()
    assert [i["request_id"] for i in only["items"]] == [ids[3], ids[1]]
    future = (
        await client.get("/ai/logs", headers=user_headers, params={"since": "2999-01-01T00:00:00Z"})
    ).json()
    assert future["items"] == []
    bad = await client.get("/ai/logs", headers=user_headers, params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_cursor"
    # Well-formed, but an id no BIGINT holds: still a 400, not a database error.
    huge = base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|" + b"9" * 30).decode()
    bad = await client.get("/ai/logs", headers=user_headers, params={"cursor": huge})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_cursor"


async def test_users_see_only_their_own_records_and_admins_may_see_all(
    client: httpx.AsyncClient,
    app: FastAPI,
    user: User,
    user_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    async with app.state.sessionmaker() as session:
        other = await create_user(session)
    other_headers = auth_headers(app, other)
    await client.post("/ai/test", headers=user_headers, json=ASK)
    await client.post("/ai/test", headers=other_headers, json=ASK)
    await ledger(app)
    mine = (await client.get("/ai/logs", headers=user_headers)).json()["items"]
    assert [i["user_id"] for i in mine] == [str(user.id)]
    refused = await client.get("/ai/logs", headers=user_headers, params={"user_id": str(other.id)})
    assert refused.status_code == 403
    theirs = (
        await client.get("/ai/logs", headers=admin_headers, params={"user_id": str(other.id)})
    ).json()["items"]
    assert [i["user_id"] for i in theirs] == [str(other.id)]
    everyone = (await client.get("/ai/logs", headers=admin_headers, params={"all": "true"})).json()[
        "items"
    ]
    assert len(everyone) == 2


async def test_content_policy_none_keeps_no_text(make_settings, gateway_settings) -> None:  # type: ignore[no-untyped-def]
    from kiban.app import create_app
    from tests.conftest import RunningApp, make_client

    async with RunningApp(
        create_app(make_settings(**{**gateway_settings, "gateway_content_policy": "none"}))
    ) as app:
        async with app.state.sessionmaker() as session:
            user = await create_user(session)
        async with make_client(app) as client:
            await client.post("/ai/test", headers=auth_headers(app, user), json=ASK)
        [row] = await ledger(app)
        assert row.prompt_text is None
        assert row.response_text is None
        assert row.completion_tokens > 0
