"""Quotas on ``/v1/messages`` (the fake OpenAI upstream and the fake Anthropic one), on every
quota store: a concurrent burst never spends past the limit, one exact ledger record each, and
Anthropic's cache tokens reach the ledger on each store's settle path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from kiban.billing.entitlements import calendar_month
from kiban.core import clock
from kiban.models import User
from kiban.settings import Settings
from tests.conftest import auth_headers, make_client
from tests.factories import ledger
from tests.fake_anthropic import FakeAnthropic
from tests.fake_upstream import FakeUpstream
from tests.quota.conftest import TEST_PLANS
from tests.quota.test_quota_http import use_tokens

QUESTION = [{"role": "user", "content": "What does the fox do?"}]


@pytest.fixture(scope="module")
def quota_anthropic() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic(keep_requests=False).start()
    yield server
    server.stop()


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(TEST_PLANS.replace('models = ["extractive", "gpt-4o*"]', 'models = ["*"]', 1))
    return path


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings],
    quota_upstream: FakeUpstream,
    quota_anthropic: FakeAnthropic,
    plans_file: Path,
    quota_backend: dict[str, Any],
) -> Settings:
    quota_upstream.reset()
    quota_anthropic.reset()
    return make_settings(
        openai_api_key="sk-test-upstream",
        openai_base_url=quota_upstream.base_url,
        anthropic_api_key=quota_anthropic.key,
        anthropic_base_url=quota_anthropic.base_url,
        plans_file=plans_file,
        ledger_flush_interval_seconds=0.01,
        **quota_backend,
    )


async def message(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    model: str,
    *,
    stream: bool = False,
    path: str = "/v1/messages",
) -> httpx.Response:
    body = {"model": model, "max_tokens": 50, "messages": QUESTION, "stream": stream}
    return await client.post(path, json=body, headers=headers)


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1/messages", "gpt-4o-mini"),
        ("/v1/messages", "claude-haiku-4-5"),
        ("/v1/chat/completions", "claude-haiku-4-5"),
    ],
)
async def test_a_burst_never_spends_past_the_limit_on_any_surface_or_upstream(
    app: FastAPI, user: User, path: str, model: str
) -> None:
    headers = auth_headers(app, user)
    start, _ = calendar_month(clock.now())
    await use_tokens(app, user, 700)  # 300 of the month's 1,000 tokens left
    async with make_client(app) as client:
        responses = await asyncio.gather(
            *(message(client, headers, model, stream=i % 2 == 1, path=path) for i in range(30))
        )
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert ok
    assert refused
    assert len(ok) + len(refused) == 30
    for response in refused:
        body = response.json()
        assert body["error"]["type"] == "rate_limit_error"  # Anthropic's and OpenAI's name
        assert body["error"]["code"] == "quota_exceeded"
        assert body.get("type") == ("error" if path == "/v1/messages" else None)
    records = await ledger(app)
    assert len(records) == 30  # exactly one per request
    assert sum(r.status == "ok" for r in records) == len(ok)
    assert sum(r.error_code == "quota_exceeded" for r in records) == len(refused)
    state = await app.state.admission.store.state(user.id, start)
    assert state.reserved_tokens == 0
    assert state.used_tokens == 700 + sum(r.total_tokens for r in records if r.status == "ok")
    assert state.used_tokens <= 1000


@pytest.mark.parametrize("stream", [False, True])
async def test_cache_tokens_reach_the_ledger_on_every_store(
    app: FastAPI, user: User, quota_anthropic: FakeAnthropic, stream: bool
) -> None:
    quota_anthropic.cache_read, quota_anthropic.cache_write = 7, 4
    start, _ = calendar_month(clock.now())
    async with make_client(app) as client:
        response = await message(client, auth_headers(app, user), "claude-haiku-4-5", stream=stream)
    assert response.status_code == 200
    [record] = await ledger(app)
    assert (record.cached_tokens, record.cache_write_tokens) == (7, 4)
    assert record.prompt_tokens == 11  # 5 words + 3 per message + 3, cache included
    state = await app.state.admission.store.state(user.id, start)
    assert state.used_tokens == record.total_tokens
    assert state.reserved_tokens == 0
