"""The ``openai`` provider against the fake upstream over HTTP: retries, deadlines, fallbacks,
failures mid-stream, keep-alives, disconnects; each request still gets exactly one ledger record."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest
from fastapi import FastAPI

from kiban.app import create_app
from kiban.core.metrics import REGISTRY
from kiban.gateway.providers.base import ProviderRequest
from kiban.settings import Settings
from tests.conftest import RunningApp, auth_headers, create_user, make_client
from tests.factories import ledger
from tests.gateway.gateway_helpers import DEFAULT_REPLY, FakeUpstream, Fault, sse_events

ASK = {"prompt": "Say something.", "grounded": False}


@pytest.fixture
def make_app(
    make_settings: Callable[..., Settings], gateway_settings: dict[str, Any]
) -> Callable[..., Any]:
    """An app with gateway settings changed (a context manager running its lifespan)."""

    def make(**overrides: Any) -> RunningApp:
        return RunningApp(create_app(make_settings(**{**gateway_settings, **overrides})))

    return make


def retries(reason: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "kiban_upstream_retries_total", {"provider": "openai", "reason": reason}
        )
        or 0.0
    )


async def test_429_retry_waits_for_retry_after(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    before = retries("upstream_unavailable")
    upstream.script(Fault.error(429, retry_after=0.4))
    response = await client.post("/ai/test", headers=user_headers, json=ASK)
    assert response.status_code == 200, response.text
    first, second = upstream.requests
    assert second.at - first.at >= 0.39
    assert retries("upstream_unavailable") == before + 1
    [record] = await ledger(app)
    assert record.status == "ok"


async def test_retry_after_past_the_deadline_fails_fast_with_503(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    upstream.script(Fault.error(429, retry_after=60))
    response = await client.post("/ai/test", headers=user_headers, json=ASK)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert response.headers["retry-after"] == "60"
    assert len(upstream.requests) == 1
    [record] = await ledger(app)
    assert (record.status, record.error_code) == ("error", "upstream_unavailable")


async def test_persistent_500_is_a_502_after_the_retries(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    upstream.script(*[Fault.error(500)] * 3)
    response = await client.post(
        "/v1/chat/completions",
        headers=user_headers,
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("upstream_error", "api_error")
    assert "x-quota-remaining" in response.headers  # admitted: the limit headers ride along
    assert len(upstream.requests) == 3  # one try and two retries
    [record] = await ledger(app)
    assert (record.status, record.error_code, record.total_tokens) == ("error", "upstream_error", 0)


async def test_upstream_400_is_the_callers_400(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    upstream.script(
        Fault.error(
            400,
            body={
                "error": {
                    "message": "bad tool schema",
                    "type": "invalid_request_error",
                    "param": "tools",
                    "code": None,
                }
            },
        )
    )
    response = await client.post("/ai/test", headers=user_headers, json=ASK)
    assert response.status_code == 400
    assert "bad tool schema" in response.json()["error"]["message"]
    assert len(upstream.requests) == 1


async def test_a_hanging_upstream_is_a_504(
    make_app: Callable[..., RunningApp], upstream: FakeUpstream
) -> None:
    upstream.script(Fault.hang(3), Fault.hang(3))
    async with make_app(
        upstream_timeout_seconds=0.3, upstream_deadline_seconds=1.0, upstream_max_retries=1
    ) as app:
        async with app.state.sessionmaker() as session:
            user = await create_user(session)
        async with make_client(app) as client:
            response = await client.post("/ai/test", headers=auth_headers(app, user), json=ASK)
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "upstream_timeout"
        assert len(upstream.requests) == 2
        [record] = await ledger(app)
        assert (record.status, record.error_code) == ("error", "upstream_timeout")
        assert record.response_time_ms < 1500


async def test_fallback_model_answers_when_the_primary_keeps_failing(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    upstream.script(*[Fault.error(503)] * 3)
    response = await client.post("/ai/test", headers=user_headers, json={**ASK, "model": "gpt-4o"})
    assert response.status_code == 200, response.text
    assert [r.body["model"] for r in upstream.requests] == ["gpt-4o"] * 3 + ["gpt-4o-mini"]
    assert response.json()["model"] == "gpt-4o-mini"
    [record] = await ledger(app)
    assert record.model == "gpt-4o-mini"  # priced as the model that answered


async def test_cut_stream_ends_with_an_error_event_and_a_record(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    upstream.script(Fault.cut(after_chunks=3))
    response = await client.post("/ai/stream", headers=user_headers, json=ASK)
    events = sse_events(response.text)
    deltas = [orjson.loads(d)["text"] for e, d in events if e == "delta"]
    assert "".join(deltas) == "The quick brown"
    assert events[-1][0] == "error"
    assert orjson.loads(events[-1][1])["code"] == "upstream_error"
    assert not [e for e, _ in events if e == "done"]
    [record] = await ledger(app)
    assert (record.status, record.error_code) == ("error", "upstream_error")
    assert record.completion_tokens == 3  # counted locally: the upstream never said
    assert record.response_text == "The quick brown"


async def test_cut_stream_raises_in_the_openai_sdk(
    app: FastAPI, user_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    upstream.script(Fault.cut(after_chunks=2))
    client = openai.AsyncOpenAI(
        api_key=user_headers["Authorization"].split()[1],
        base_url="http://testserver/v1",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
    )
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    [record] = await ledger(app)
    assert record.status == "error"
    assert record.streamed


async def test_keepalive_comments_flow_during_a_long_pause(
    make_app: Callable[..., RunningApp], upstream: FakeUpstream
) -> None:
    upstream.script(Fault.stall(after_chunks=2, seconds=0.5))
    async with make_app(gateway_stream_keepalive_seconds=0.1) as app:
        async with app.state.sessionmaker() as session:
            user = await create_user(session)
        async with make_client(app) as client:
            response = await client.post("/ai/stream", headers=auth_headers(app, user), json=ASK)
        events = sse_events(response.text)
        assert ("comment", "keep-alive") in events
        assert events[-1][0] == "done"
        assert "".join(orjson.loads(d)["text"] for e, d in events if e == "delta") == DEFAULT_REPLY


async def _read_first_delta(
    base_url: str, headers: dict[str, str], path: str, body: dict[str, Any]
) -> None:
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=5) as client,
        client.stream("POST", path, headers=headers, json=body) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = orjson.loads(line[5:])
            choices = data.get("choices") or [{}]
            if data.get("text") or (choices[0].get("delta") or {}).get("content"):
                return  # leaving the block closes the connection mid-stream


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/ai/stream", ASK),
        (
            "/v1/chat/completions",
            {
                "model": "gpt-4o-mini",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ),
    ],
)
async def test_client_disconnect_cancels_upstream_and_records_tokens_so_far(
    served: str,
    app: FastAPI,
    user_headers: dict[str, str],
    upstream: FakeUpstream,
    path: str,
    body: dict[str, Any],
) -> None:
    upstream.chunk_delay_ms = 100  # ten words: about a second if nobody stops it
    await _read_first_delta(served, user_headers, path, body)
    for _ in range(100):
        records = await ledger(app)
        if records:
            break
        await asyncio.sleep(0.02)
    [record] = records
    assert (record.status, record.error_code) == ("cancelled", "client_disconnected")
    assert 1 <= record.completion_tokens < len(DEFAULT_REPLY.split(" "))
    assert record.response_time_ms < 900


async def test_plan_refusal_is_recorded_as_rejected_without_an_upstream_call(
    make_app: Callable[..., RunningApp], upstream: FakeUpstream
) -> None:
    async with make_app(plans_file=None) as app:  # the shipped plans: gpt-4o is not on "free"
        async with app.state.sessionmaker() as session:
            user = await create_user(session)
        async with make_client(app) as client:
            response = await client.post(
                "/ai/test", headers=auth_headers(app, user), json={**ASK, "model": "gpt-4o"}
            )
        assert response.status_code in (402, 403)
        [record] = await ledger(app)
        assert record.status == "rejected"
        assert record.error_code == response.json()["error"]["code"]
        assert upstream.requests == []


async def test_no_database_connection_is_held_while_the_model_answers(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    upstream.script(Fault.hang(0.5))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    pending = asyncio.create_task(
        client.post("/v1/chat/completions", headers=user_headers, json=body)
    )
    while not upstream.requests:  # noqa: ASYNC110 (the fake upstream runs in another thread)
        await asyncio.sleep(0.01)
    assert app.state.engine.sync_engine.pool.checkedout() == 0
    assert (await pending).status_code == 200


async def test_stream_that_cannot_open_is_a_clean_error_response(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    upstream.script(*[Fault.error(500)] * 3)
    response = await client.post("/ai/stream", headers=user_headers, json=ASK)
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "upstream_error"
    [record] = await ledger(app)
    assert (record.status, record.streamed, record.error_code) == ("error", True, "upstream_error")


async def test_a_stream_closed_before_it_is_read_frees_the_upstream_connection(
    make_app: Callable[..., RunningApp], upstream: FakeUpstream
) -> None:
    # The path where the response never starts iterating (the client is gone before the first
    # byte): the generator's cleanup never runs, so closing the stream must free the connection.
    # With a pool of one connection, a connection still held would block the next request (the
    # stream is slow, so the first response would not reach its end and free it by itself).
    upstream.chunk_delay_ms = 2000
    async with make_app(upstream_max_connections=1) as app:
        gateway = app.state.gateway
        provider = gateway.providers["openai"]
        request = ProviderRequest(
            gateway.catalog.models["gpt-4o-mini"],
            {"messages": [{"role": "user", "content": "hi"}]},
            5,
        )
        stream = await provider.stream(request)
        await stream.aclose()
        async with asyncio.timeout(1.5):
            second = await provider.stream(request)
        await second.aclose()
