"""``/v1/messages``: the official ``anthropic`` SDK against kiban, in front of the fake Anthropic
server and the fake OpenAI-compatible one; one exact ledger record each."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from fastapi import FastAPI

from kiban.models import User
from tests.conftest import make_client
from tests.factories import ledger, upload
from tests.gateway.gateway_helpers import (
    DEFAULT_REPLY,
    FakeAnthropic,
    FakeUpstream,
    sse_events,
    with_anthropic,
)

QUESTION = [{"role": "user", "content": "Say something about foxes."}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
def gateway_settings(
    gateway_settings: dict[str, Any], anthropic_upstream: FakeAnthropic
) -> dict[str, Any]:
    return with_anthropic(gateway_settings, anthropic_upstream)


def token(headers: dict[str, str]) -> str:
    return headers["Authorization"].split(" ", 1)[1]


def sdk(app: FastAPI, headers: dict[str, str]) -> anthropic.AsyncAnthropic:
    """The official SDK, pointed at kiban through the ASGI transport, with a kiban credential."""
    return anthropic.AsyncAnthropic(
        api_key=token(headers),
        base_url="http://testserver",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)),
    )


def price(prompt: int, completion: int, read: int = 0, write: int = 0) -> Decimal:
    """claude-sonnet-4-5's cost, from the shipped prices (USD per million tokens)."""
    uncached = prompt - read - write
    total = (
        uncached * Decimal("3.00")
        + read * Decimal("0.30")
        + write * Decimal("3.75")
        + completion * Decimal("15.00")
    )
    return (total / 1_000_000).quantize(Decimal("0.0000000001"))


# --- JSON ------------------------------------------------------------------------------------


async def test_message_from_an_openai_upstream(
    app: FastAPI, user_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    message = await sdk(app, user_headers).messages.create(
        model="gpt-4o-mini",
        max_tokens=200,
        messages=QUESTION,  # type: ignore[arg-type]
    )
    assert message.type == "message"
    assert message._request_id  # the request-id header, where the SDK reads it
    assert message.role == "assistant"
    assert message.model == "gpt-4o-mini"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == DEFAULT_REPLY  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    [sent] = upstream.requests
    assert sent.body["messages"] == QUESTION
    assert sent.body["max_tokens"] == 200
    prompt = FakeUpstream.prompt_tokens(sent.body)
    assert message.usage.input_tokens == prompt
    assert message.usage.output_tokens == len(DEFAULT_REPLY.split())
    [record] = await ledger(app)
    assert (record.endpoint, record.status, record.provider) == ("messages", "ok", "openai")
    assert not record.streamed
    assert (record.prompt_tokens, record.completion_tokens) == (
        prompt,
        len(DEFAULT_REPLY.split()),
    )
    assert record.estimated_cost is not None
    assert record.estimated_cost > 0


async def test_message_from_an_anthropic_upstream_meters_its_cache_tokens(
    app: FastAPI, user_headers: dict[str, str], anthropic_upstream: FakeAnthropic
) -> None:
    anthropic_upstream.cache_read, anthropic_upstream.cache_write = 5, 3
    message = await sdk(app, user_headers).messages.create(
        model="claude-sonnet-4-5",
        max_tokens=200,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=QUESTION,  # type: ignore[arg-type]
    )
    assert message.content[0].text == DEFAULT_REPLY  # type: ignore[union-attr]
    [sent] = anthropic_upstream.requests
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["system"] == [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
    ]
    assert sent.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": QUESTION[0]["content"]}]}
    ]
    prompt = FakeAnthropic.input_tokens(sent.body)
    completion = len(DEFAULT_REPLY.split())
    assert message.usage.input_tokens == prompt - 8
    assert message.usage.cache_read_input_tokens == 5
    assert message.usage.cache_creation_input_tokens == 3
    assert message.usage.output_tokens == completion
    [record] = await ledger(app)
    assert (record.endpoint, record.status, record.provider) == ("messages", "ok", "anthropic")
    assert record.model == "claude-sonnet-4-5"
    assert (record.prompt_tokens, record.completion_tokens) == (prompt, completion)
    assert (record.cached_tokens, record.cache_write_tokens) == (5, 3)
    assert record.estimated_cost == price(prompt, completion, read=5, write=3)


async def test_system_prompt_and_turns_reach_an_openai_upstream(
    app: FastAPI, user_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    turns = [
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi! What can I do?"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Tell me"},
                {"type": "text", "text": " about foxes."},
            ],
        },
    ]
    await sdk(app, user_headers).messages.create(
        model="gpt-4o-mini",
        max_tokens=50,
        system="You are terse.",
        messages=turns,  # type: ignore[arg-type]
        extra_body={"temperature": 0.5},  # this SDK's create() no longer names it
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
    )
    [sent] = upstream.requests
    assert sent.body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi! What can I do?"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Tell me"},
                {"type": "text", "text": " about foxes."},
            ],
        },
    ]
    assert (sent.body["temperature"], sent.body["stop"], sent.body["user"]) == (0.5, ["END"], "u-1")


async def test_cache_control_is_taken_off_for_an_openai_upstream(
    app: FastAPI, user_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    await sdk(app, user_headers).messages.create(
        model="gpt-4o-mini",
        max_tokens=50,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=QUESTION,  # type: ignore[arg-type]
    )
    [sent] = upstream.requests
    assert sent.body["messages"][0] == {
        "role": "system",
        "content": [{"type": "text", "text": "Be brief."}],
    }


# --- streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5"])
async def test_streamed_message_matches_the_unstreamed_one(
    app: FastAPI,
    user_headers: dict[str, str],
    upstream: FakeUpstream,
    anthropic_upstream: FakeAnthropic,
    model: str,
) -> None:
    anthropic_upstream.cache_read = 4
    client = sdk(app, user_headers)
    whole = await client.messages.create(model=model, max_tokens=200, messages=QUESTION)  # type: ignore[arg-type]
    texts = []
    async with client.messages.stream(model=model, max_tokens=200, messages=QUESTION) as stream:  # type: ignore[arg-type]
        async for text in stream.text_stream:
            texts.append(text)
        final = await stream.get_final_message()
    assert "".join(texts) == DEFAULT_REPLY
    assert len(texts) > 1
    assert final.content[0].text == DEFAULT_REPLY  # type: ignore[union-attr]
    assert final.stop_reason == whole.stop_reason == "end_turn"
    assert final.usage.model_dump() == whole.usage.model_dump()
    sync_record, stream_record = await ledger(app)
    fields = (
        "status",
        "model",
        "provider",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "estimated_cost",
        "response_text",
    )
    assert {f: getattr(sync_record, f) for f in fields} == {
        f: getattr(stream_record, f) for f in fields
    }
    assert (sync_record.streamed, stream_record.streamed) == (False, True)
    assert stream_record.time_to_first_token_ms is not None


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5"])
async def test_a_message_cut_by_max_tokens_says_so(
    app: FastAPI,
    user_headers: dict[str, str],
    upstream: FakeUpstream,
    anthropic_upstream: FakeAnthropic,
    model: str,
) -> None:
    client = sdk(app, user_headers)
    whole = await client.messages.create(model=model, max_tokens=3, messages=QUESTION)  # type: ignore[arg-type]
    async with client.messages.stream(model=model, max_tokens=3, messages=QUESTION) as stream:  # type: ignore[arg-type]
        streamed = await stream.get_final_message()
    for message in (whole, streamed):
        assert message.stop_reason == "max_tokens"
        assert message.content[0].text == "The quick brown"  # type: ignore[union-attr]
        assert message.usage.output_tokens == 3


async def test_stream_speaks_anthropics_event_types(
    app: FastAPI, user_headers: dict[str, str], anthropic_upstream: FakeAnthropic
) -> None:
    anthropic_upstream.cache_read = 2
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "stream": True, "messages": QUESTION}
    async with make_client(app) as client:
        response = await client.post("/v1/messages", json=body, headers=user_headers)
    assert response.status_code == 200
    events = [(name, json.loads(data)) for name, data in sse_events(response.text)]
    # message_start says the prompt's usage as the upstream said it in its own message_start.
    prompt = FakeAnthropic.input_tokens(anthropic_upstream.requests[0].body)
    assert events[0][1]["message"]["usage"] == {
        "input_tokens": prompt - 2,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 2,
    }
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"]
    names = [name for name, _ in sse_events(response.text) if name != "comment"]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


# --- tool use --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5"])
@pytest.mark.parametrize("streamed", [False, True])
async def test_tool_use_round_trip(
    app: FastAPI,
    user_headers: dict[str, str],
    upstream: FakeUpstream,
    anthropic_upstream: FakeAnthropic,
    model: str,
    streamed: bool,
) -> None:
    upstream.tool_call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    anthropic_upstream.tool_use = {"name": "get_weather", "input": {"city": "Paris"}}
    client = sdk(app, user_headers)
    ask: dict[str, Any] = {
        "model": model,
        "max_tokens": 300,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "auto"},
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    }
    if streamed:
        async with client.messages.stream(**ask) as stream:
            first = await stream.get_final_message()
    else:
        first = await client.messages.create(**ask)
    assert first.stop_reason == "tool_use"
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
    turns = [
        *ask["messages"],
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}],
        },
    ]
    second = await client.messages.create(**{**ask, "messages": turns})
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == DEFAULT_REPLY  # type: ignore[union-attr]
    if model == "gpt-4o-mini":
        offered, answered = upstream.requests[0].body, upstream.requests[1].body
        assert offered["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parameters": WEATHER_TOOL["input_schema"],
                },
            }
        ]
        assert offered["tool_choice"] == "auto"
        assert answered["messages"][-2]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert answered["messages"][-1] == {
            "role": "tool",
            "tool_call_id": call.id,
            "content": "Sunny, 21 C",
        }
    else:
        answered = anthropic_upstream.requests[1].body
        assert anthropic_upstream.requests[0].body["tools"] == [WEATHER_TOOL]
        assert answered["messages"][-1] == {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}],
        }
        assert answered["messages"][-2]["content"][-1] == {
            "type": "tool_use",
            "id": call.id,
            "name": "get_weather",
            "input": {"city": "Paris"},
        }
    records = await ledger(app)
    assert [(r.endpoint, r.status) for r in records] == [("messages", "ok")] * 2
    assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 for r in records)


# --- errors, auth, limits ----------------------------------------------------------------------


async def test_errors_answer_in_anthropics_shape(
    app: FastAPI, user_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    async with make_client(app) as client:
        response = await client.post(
            "/v1/messages",
            json={"model": "gpt-4o-mini", "messages": QUESTION},
            headers=user_headers,
        )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "invalid_request"
    assert "max_tokens" in body["error"]["message"]
    assert body["request_id"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        await sdk(app, user_headers).messages.create(
            model="no-such-model", max_tokens=10, messages=QUESTION
        )  # type: ignore[arg-type]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert missing.value.body["error"]["code"] == "model_not_found"  # type: ignore[index]
    cached = [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]
    with pytest.raises(anthropic.NotFoundError):
        await sdk(app, user_headers).messages.create(
            model="no-such-claude",
            max_tokens=10,
            messages=[{"role": "user", "content": cached}],  # type: ignore[list-item]
        )
    assert upstream.requests == []
    records = await ledger(app)
    assert [(r.status, r.error_code, r.model) for r in records] == [
        ("rejected", "invalid_request", "gpt-4o-mini"),
        ("rejected", "model_not_found", "no-such-model"),
        ("rejected", "model_not_found", "no-such-claude"),
    ]


async def test_untranslatable_content_is_refused_naming_it(
    app: FastAPI, user_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
    }
    with pytest.raises(anthropic.BadRequestError) as refused:
        await sdk(app, user_headers).messages.create(
            model="gpt-4o-mini",
            max_tokens=10,
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}
            ],  # type: ignore[list-item]
        )
    error = refused.value.body["error"]  # type: ignore[index]
    assert error["code"] == "untranslatable"
    assert error["param"] == "messages[0].content[1].type"
    assert "'image'" in error["message"]
    async with make_client(app) as client:
        thinking = await client.post(
            "/v1/messages",
            json={
                "model": "gpt-4o-mini",
                "max_tokens": 10,
                "messages": QUESTION,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            },
            headers=user_headers,
        )
    assert thinking.status_code == 400
    assert thinking.json()["error"]["param"] == "thinking"
    assert upstream.requests == []
    assert [r.error_code for r in await ledger(app)] == ["untranslatable", "untranslatable"]


async def test_x_api_key_and_bearer_both_authenticate(
    app: FastAPI, user: User, upstream: FakeUpstream, session: Any
) -> None:
    from kiban.auth import create_api_key

    created = await create_api_key(session, user, "claude-code")
    await session.commit()
    body = {"model": "gpt-4o-mini", "max_tokens": 20, "messages": QUESTION}
    async with make_client(app) as client:
        by_key = await client.post(
            "/v1/messages",
            json=body,
            headers={"x-api-key": created.plaintext, "anthropic-version": "2023-06-01"},
        )
        by_bearer = await client.post(
            "/v1/messages", json=body, headers={"Authorization": f"Bearer {created.plaintext}"}
        )
        wrong = await client.post("/v1/messages", json=body, headers={"x-api-key": "kb_nope"})
        none = await client.post("/v1/messages", json=body)
    assert by_key.status_code == by_bearer.status_code == 200, by_key.text
    assert "anthropic-version" not in by_key.headers
    for refused in (wrong, none):
        assert refused.status_code == 401
        assert refused.json()["type"] == "error"
        assert refused.json()["error"]["type"] == "authentication_error"
    records = await ledger(app)
    assert [r.api_key_id for r in records] == [created.record.id] * 2


async def test_sdk_with_its_default_key_header_authenticates(
    app: FastAPI, user: User, upstream: FakeUpstream, session: Any
) -> None:
    """A client that puts the key in ``x-api-key`` (Claude Code, ANTHROPIC_API_KEY)."""
    from kiban.auth import create_api_key

    created = await create_api_key(session, user, "sdk")
    await session.commit()
    client = anthropic.AsyncAnthropic(
        api_key=None,
        auth_token=None,
        base_url="http://testserver",
        max_retries=0,
        default_headers={"x-api-key": created.plaintext},
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)),
    )
    message = await client.messages.create(model="gpt-4o-mini", max_tokens=20, messages=QUESTION)  # type: ignore[arg-type]
    assert message.content[0].text  # type: ignore[union-attr]


async def test_an_sdk_configured_only_by_its_environment_works(
    app: FastAPI,
    user: User,
    upstream: FakeUpstream,
    session: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY, as Claude Code and the SDKs read them."""
    from kiban.auth import create_api_key

    created = await create_api_key(session, user, "env")
    await session.commit()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://testserver")
    monkeypatch.setenv("ANTHROPIC_API_KEY", created.plaintext)
    client = anthropic.AsyncAnthropic(
        max_retries=0, http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    )
    message = await client.messages.create(model="gpt-4o-mini", max_tokens=20, messages=QUESTION)  # type: ignore[arg-type]
    assert message.content[0].text == DEFAULT_REPLY  # type: ignore[union-attr]
    [record] = await ledger(app)
    assert record.api_key_id == created.record.id


async def test_a_request_shaped_like_claude_codes_is_served(
    app: FastAPI, user: User, anthropic_upstream: FakeAnthropic, session: Any
) -> None:
    """What Claude Code sends: its key in x-api-key, beta headers, ?beta=true, cache breakpoints
    on the system blocks, the tools and the last turn, a user id in metadata, a stream."""
    from kiban.auth import create_api_key

    created = await create_api_key(session, user, "claude-code")
    await session.commit()
    ephemeral = {"type": "ephemeral"}
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": True,
        "temperature": 1,
        "metadata": {"user_id": "user_abc_account__session_1"},
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": ephemeral},
            {"type": "text", "text": "Work in /repo.", "cache_control": ephemeral},
        ],
        "tools": [{**WEATHER_TOOL, "cache_control": ephemeral}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in /repo?", "cache_control": ephemeral}
                ],
            }
        ],
    }
    headers = {
        "x-api-key": created.plaintext,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "anthropic-dangerous-direct-browser-access": "true",
        "x-app": "cli",
        "user-agent": "claude-cli/2.0.0 (external, cli)",
    }
    async with make_client(app) as client:
        response = await client.post("/v1/messages?beta=true", json=body, headers=headers)
    assert response.status_code == 200, response.text
    names = [name for name, _ in sse_events(response.text)]
    assert names[0] == "message_start"
    assert names[-1] == "message_stop"
    [sent] = anthropic_upstream.requests
    assert sent.body["system"] == body["system"]
    assert sent.body["tools"] == body["tools"]
    assert sent.body["messages"] == body["messages"]
    assert sent.body["metadata"] == body["metadata"]
    assert sent.body["max_tokens"] == 1024  # the free plan's cap


async def test_a_malformed_anthropic_version_is_refused(
    app: FastAPI, user_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    body = {"model": "gpt-4o-mini", "max_tokens": 20, "messages": QUESTION}
    async with make_client(app) as client:
        response = await client.post(
            "/v1/messages", json=body, headers={**user_headers, "anthropic-version": "latest"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert upstream.requests == []


async def test_max_tokens_is_capped_by_the_plan(
    app: FastAPI, user_headers: dict[str, str], anthropic_upstream: FakeAnthropic
) -> None:
    await sdk(app, user_headers).messages.create(
        model="claude-haiku-4-5",
        max_tokens=8_000,
        messages=QUESTION,  # type: ignore[arg-type]
    )
    [sent] = anthropic_upstream.requests
    assert sent.body["max_tokens"] == 1024  # the free plan's max_tokens


async def test_the_extractive_engine_answers_in_anthropics_shape(
    app: FastAPI, user_headers: dict[str, str]
) -> None:
    client = sdk(app, user_headers)
    message = await client.messages.create(model="extractive", max_tokens=100, messages=QUESTION)  # type: ignore[arg-type]
    assert message.stop_reason == "end_turn"
    async with client.messages.stream(
        model="extractive", max_tokens=100, messages=QUESTION
    ) as stream:  # type: ignore[arg-type]
        final = await stream.get_final_message()
    assert final.content[0].text == message.content[0].text  # type: ignore[union-attr]
    records = await ledger(app)
    assert [(r.endpoint, r.status, r.provider) for r in records] == [
        ("messages", "no_context", "extractive")
    ] * 2


async def test_the_extractive_engine_quotes_documents_through_messages(
    app: FastAPI, user_headers: dict[str, str]
) -> None:
    async with make_client(app) as client:
        await upload(
            client,
            user_headers,
            "foxes.txt",
            "Foxes are small omnivores. Foxes live on every continent except Antarctica.",
            content_type="text/plain",
            expect=201,
        )
    ask = [{"role": "user", "content": "Where do foxes live?"}]
    client = sdk(app, user_headers)
    message = await client.messages.create(model="extractive", max_tokens=100, messages=ask)  # type: ignore[arg-type]
    text = message.content[0].text  # type: ignore[union-attr]
    assert "Antarctica" in text
    async with client.messages.stream(model="extractive", max_tokens=100, messages=ask) as stream:  # type: ignore[arg-type]
        streamed = "".join([t async for t in stream.text_stream])
    assert streamed == text
    records = await ledger(app)
    assert [(r.endpoint, r.status) for r in records] == [("messages", "ok")] * 2
    assert records[0].source_ids
    assert message.usage.output_tokens == records[0].completion_tokens > 0


async def test_count_tokens_counts_without_metering(
    app: FastAPI, user_headers: dict[str, str]
) -> None:
    counted = await sdk(app, user_headers).messages.count_tokens(
        model="gpt-4o-mini",
        messages=QUESTION,  # type: ignore[arg-type]
    )
    assert counted.input_tokens > 0
    assert await ledger(app) == []


# --- upstream failures -----------------------------------------------------------------------


async def test_anthropic_429_is_one_attempt_with_its_retry_after(
    app: FastAPI, user_headers: dict[str, str], anthropic_upstream: FakeAnthropic
) -> None:
    from tests.fake_upstream import Fault

    anthropic_upstream.script(Fault.error(429, retry_after=7))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": QUESTION}
    async with make_client(app) as client:
        response = await client.post("/v1/messages", json=body, headers=user_headers)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    assert response.json()["error"]["type"] == "overloaded_error"
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert len(anthropic_upstream.requests) == 1  # one attempt: retries belong to the router
    [record] = await ledger(app)
    assert (record.status, record.error_code, record.prompt_tokens) == (
        "error",
        "upstream_unavailable",
        0,
    )


async def test_anthropic_stream_cut_midway_is_recorded_with_its_tokens(
    app: FastAPI, user_headers: dict[str, str], anthropic_upstream: FakeAnthropic
) -> None:
    from tests.fake_upstream import Fault

    anthropic_upstream.script(Fault.cut(after_chunks=5))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": QUESTION}
    async with make_client(app) as client:
        response = await client.post("/v1/messages", json=body, headers=user_headers)
    events = [(n, d) for n, d in sse_events(response.text) if n != "comment"]
    assert events[-1][0] == "error"
    assert '"type":"api_error"' in events[-1][1]
    [record] = await ledger(app)
    assert (record.status, record.error_code) == ("error", "upstream_error")
    sent = anthropic_upstream.requests[0].body
    assert record.prompt_tokens == FakeAnthropic.input_tokens(sent)  # said in message_start
    assert 0 < record.completion_tokens < len(DEFAULT_REPLY.split())


async def test_the_sdk_raises_on_a_stream_that_fails_midway(
    app: FastAPI, user_headers: dict[str, str], anthropic_upstream: FakeAnthropic
) -> None:
    from tests.fake_upstream import Fault

    anthropic_upstream.script(Fault.cut(after_chunks=4))
    client = sdk(app, user_headers)
    texts: list[str] = []

    async def read() -> None:
        async with client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=QUESTION,  # type: ignore[arg-type]
        ) as stream:
            async for text in stream.text_stream:
                texts.append(text)

    with pytest.raises(anthropic.APIStatusError) as failed:
        await read()
    assert texts  # what came before the cut reached the client
    assert failed.value.body["error"]["code"] == "upstream_error"  # type: ignore[index]
    [record] = await ledger(app)
    assert record.status == "error"


@pytest.mark.parametrize("stream", [False, True])
async def test_an_anthropic_upstream_that_hangs_is_a_timeout(
    app: FastAPI, user_headers: dict[str, str], anthropic_upstream: FakeAnthropic, stream: bool
) -> None:
    from tests.fake_upstream import Fault

    # The per-read timeout is 2 s in these tests and the deadline 6 s: every attempt hangs,
    # the router tries again until the deadline, and the answer is a timeout.
    anthropic_upstream.script(*[Fault.hang(3.0)] * 4)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 20, "stream": stream, "messages": QUESTION}
    async with make_client(app) as client:
        response = await client.post("/v1/messages", json=body, headers=user_headers)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert response.json()["error"]["type"] == "api_error"
    [record] = await ledger(app)
    assert (record.status, record.error_code) == ("error", "upstream_timeout")
    assert record.attempts >= 2


async def test_client_leaving_mid_stream_is_recorded_as_cancelled(
    served: str,
    app: FastAPI,
    user_headers: dict[str, str],
    anthropic_upstream: FakeAnthropic,
) -> None:
    anthropic_upstream.chunk_delay_ms = 100
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": QUESTION}
    async with (
        httpx.AsyncClient(base_url=served) as client,
        client.stream("POST", "/v1/messages", json=body, headers=user_headers) as response,
    ):
        async for line in response.aiter_lines():
            if "text_delta" in line:
                break  # the first words arrived: leave
    for _ in range(100):
        records = await ledger(app)
        if records:
            break
        import asyncio

        await asyncio.sleep(0.05)
    [record] = records
    assert (record.status, record.error_code) == ("cancelled", "client_disconnected")
    assert record.prompt_tokens > 0
