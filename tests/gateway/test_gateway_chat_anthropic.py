"""``/v1/chat/completions`` in front of an Anthropic upstream: the official ``openai`` SDK keeps
working whatever serves the model; usage (cache reads and writes included) metered exactly."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from tests.conftest import make_client
from tests.factories import ledger
from tests.gateway.gateway_helpers import DEFAULT_REPLY, FakeAnthropic, Fault, with_anthropic

MODEL = "claude-haiku-4-5"
QUESTION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something about foxes."},
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def gateway_settings(
    gateway_settings: dict[str, Any], anthropic_upstream: FakeAnthropic
) -> dict[str, Any]:
    return with_anthropic(gateway_settings, anthropic_upstream)


def sdk(app: FastAPI, headers: dict[str, str]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=headers["Authorization"].split(" ", 1)[1],
        base_url="http://testserver/v1",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
    )


def haiku(prompt: int, completion: int, read: int, write: int) -> Decimal:
    total = (
        (prompt - read - write) * Decimal("1.00")
        + read * Decimal("0.10")
        + write * Decimal("1.25")
        + completion * Decimal("5.00")
    )
    return (total / 1_000_000).quantize(Decimal("0.0000000001"))


async def test_chat_completion_from_an_anthropic_upstream(
    app: FastAPI, user_headers: dict[str, str], anthropic_upstream: FakeAnthropic
) -> None:
    anthropic_upstream.cache_read, anthropic_upstream.cache_write = 6, 2
    completion = await sdk(app, user_headers).chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=100,
        stop=["END"],
        user="u-7",
    )
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert completion.choices[0].finish_reason == "stop"
    [sent] = anthropic_upstream.requests
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body == {
        "model": MODEL,
        "max_tokens": 100,
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Say something about foxes."}]}
        ],
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-7"},
    }
    prompt = FakeAnthropic.input_tokens(sent.body)
    words = len(DEFAULT_REPLY.split())
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt, words)
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 6
    [record] = await ledger(app)
    assert (record.endpoint, record.provider, record.status) == (
        "chat_completions",
        "anthropic",
        "ok",
    )
    assert (record.prompt_tokens, record.completion_tokens) == (prompt, words)
    assert (record.cached_tokens, record.cache_write_tokens) == (6, 2)
    assert record.estimated_cost == haiku(prompt, words, 6, 2)


async def test_streamed_chat_completion_from_an_anthropic_upstream(
    app: FastAPI, user_headers: dict[str, str], anthropic_upstream: FakeAnthropic
) -> None:
    anthropic_upstream.cache_read = 3
    stream = await sdk(app, user_headers).chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        stream=True,
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert text == DEFAULT_REPLY
    assert finish == "stop"
    [sent] = anthropic_upstream.requests
    assert sent.body["stream"] is True
    assert sent.body["max_tokens"] == 1024  # the plan's cap: Anthropic requires one
    assert usage is not None
    assert usage.prompt_tokens == FakeAnthropic.input_tokens(sent.body)
    [record] = await ledger(app)
    assert record.streamed
    assert (record.prompt_tokens, record.completion_tokens, record.cached_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
        3,
    )


@pytest.mark.parametrize("streamed", [False, True])
async def test_tool_calls_cross_to_an_anthropic_upstream_and_back(
    app: FastAPI, user_headers: dict[str, str], anthropic_upstream: FakeAnthropic, streamed: bool
) -> None:
    anthropic_upstream.tool_use = {"name": "get_weather", "input": {"city": "Paris"}}
    client = sdk(app, user_headers)
    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    if streamed:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        async for chunk in await client.chat.completions.create(**ask, stream=True):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for delta in choice.delta.tool_calls or ():
                    call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] += delta.id or ""
                    if delta.function:
                        call["name"] += delta.function.name or ""
                        call["arguments"] += delta.function.arguments or ""
        [made] = calls.values()
        call_id, name, arguments = made["id"], made["name"], made["arguments"]
    else:
        completion = await client.chat.completions.create(**ask)
        finish = completion.choices[0].finish_reason
        [tool_call] = completion.choices[0].message.tool_calls or []
        call_id = tool_call.id
        name, arguments = tool_call.function.name, tool_call.function.arguments  # type: ignore[union-attr]
    assert finish == "tool_calls"
    assert (name, arguments) == ("get_weather", '{"city":"Paris"}')
    offered = anthropic_upstream.requests[0].body
    assert offered["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER["function"]["parameters"],
            "description": "The weather in a city.",
        }
    ]
    assert offered["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    turns = [
        *ask["messages"],
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "Sunny"},
    ]
    answer = await client.chat.completions.create(model=MODEL, messages=turns, tools=[WEATHER])  # type: ignore[arg-type, list-item]
    assert answer.choices[0].message.content == DEFAULT_REPLY
    answered = anthropic_upstream.requests[1].body["messages"]
    assert answered[1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": call_id, "name": "get_weather", "input": {"city": "Paris"}}
        ],
    }
    assert answered[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "Sunny"}],
    }
    assert [r.status for r in await ledger(app)] == ["ok", "ok"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 2), ("logprobs", True), ("response_format", {"type": "json_object"}), ("seed", 1)],
)
async def test_untranslatable_chat_fields_are_refused_naming_them(
    app: FastAPI,
    user_headers: dict[str, str],
    anthropic_upstream: FakeAnthropic,
    field: str,
    value: Any,
) -> None:
    body = {"model": MODEL, "messages": QUESTION, field: value}
    async with make_client(app) as client:
        response = await client.post("/v1/chat/completions", json=body, headers=user_headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "untranslatable",
        field,
        "invalid_request_error",
    )
    assert anthropic_upstream.requests == []
    [record] = await ledger(app)
    assert (record.status, record.error_code, record.prompt_tokens) == (
        "error",
        "untranslatable",
        0,
    )


async def test_an_image_part_is_refused_for_an_anthropic_model(
    app: FastAPI, user_headers: dict[str, str], anthropic_upstream: FakeAnthropic
) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk(app, user_headers).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
        )
    assert refused.value.code == "untranslatable"
    assert anthropic_upstream.requests == []


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (Fault.error(401), 502, "upstream_error"),
        (Fault.error(400), 400, "upstream_rejected_request"),
    ],
)
async def test_anthropic_errors_map_to_the_gateways_and_are_not_retried(
    app: FastAPI,
    user_headers: dict[str, str],
    anthropic_upstream: FakeAnthropic,
    fault: Fault,
    status: int,
    code: str,
) -> None:
    anthropic_upstream.script(fault)
    async with make_client(app) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": QUESTION},
            headers=user_headers,
        )
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert len(anthropic_upstream.requests) == 1
    [record] = await ledger(app)
    assert (record.status, record.error_code, record.attempts) == ("error", code, 1)


@pytest.mark.parametrize("fault", [Fault.error(500), Fault.error(529)])
async def test_anthropic_failures_that_may_pass_are_retried_by_the_router(
    app: FastAPI, user_headers: dict[str, str], anthropic_upstream: FakeAnthropic, fault: Fault
) -> None:
    anthropic_upstream.script(fault)  # the first attempt fails, the next is answered
    async with make_client(app) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": QUESTION},
            headers=user_headers,
        )
    assert response.status_code == 200
    assert len(anthropic_upstream.requests) == 2
    [record] = await ledger(app)
    assert (record.status, record.deployment, record.attempts) == ("ok", "anthropic", 2)


async def test_an_error_event_mid_stream_ends_the_stream_with_an_error(
    app: FastAPI, user_headers: dict[str, str], anthropic_upstream: FakeAnthropic
) -> None:
    anthropic_upstream.script(
        Fault("status", status=529, after_chunks=4, body={"stream_error": "overloaded_error"})
    )
    stream = await sdk(app, user_headers).chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        stream=True,
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    [record] = await ledger(app)
    assert (record.status, record.error_code) == ("error", "upstream_unavailable")
    assert record.completion_tokens > 0
