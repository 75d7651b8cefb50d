"""The translations between Anthropic's Messages format and OpenAI's chat format (pure functions):
round trips of requests, answers and streams, what is refused, and the prices of cached tokens."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiban.gateway.exceptions import InvalidRequest, Untranslatable
from kiban.gateway.pricing import Price
from kiban.gateway.providers.base import TokenUsage
from kiban.gateway.providers.translate.anthropic_answers import EventWriter, message_json
from kiban.gateway.providers.translate.anthropic_to_chat import for_openai, read_request
from kiban.gateway.providers.translate.chat_to_anthropic import (
    ChunkReader,
    anthropic_request,
    chat_completion,
)
from tests.gateway.gateway_helpers import sse_events

words = st.text(alphabet="abcdefgh xyz.", min_size=1, max_size=30).filter(str.strip)
names = st.text(alphabet="abcdefgh_", min_size=1, max_size=12)
# JSON from the wire: orjson reads integers past 64 bits as floats.
inputs = st.dictionaries(
    names, st.one_of(st.integers(-(2**63), 2**63 - 1), words, st.booleans()), max_size=3
)
cache = st.sampled_from([None, {"type": "ephemeral"}])


def text_block(text: str, cached: dict[str, Any] | None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if cached is not None:
        block["cache_control"] = cached
    return block


@st.composite
def conversations(draw: st.DrawFn) -> dict[str, Any]:
    """Anthropic requests of the common subset, in the block form Anthropic itself echoes."""
    messages: list[dict[str, Any]] = []
    for turn in range(draw(st.integers(1, 4))):
        if turn % 2 == 0:
            content = [text_block(draw(words), draw(cache)) for _ in range(draw(st.integers(1, 2)))]
            previous = messages[-1]["content"] if messages else []
            calls = [b for b in previous if b["type"] == "tool_use"]
            results = [
                {
                    "type": "tool_result",
                    "tool_use_id": call["id"],
                    "content": draw(words),
                    **({"is_error": True} if draw(st.booleans()) else {}),
                }
                for call in calls
            ]
            messages.append({"role": "user", "content": results + content})
        else:
            content = [text_block(draw(words), None)] if draw(st.booleans()) else []
            for number in range(draw(st.integers(0 if content else 1, 2))):
                call = {
                    "type": "tool_use",
                    "id": f"toolu_{turn}_{number}",
                    "name": draw(names),
                    "input": draw(inputs),
                }
                if draw(st.booleans()):
                    call["cache_control"] = {"type": "ephemeral"}
                content.append(call)
            messages.append({"role": "assistant", "content": content})
    body: dict[str, Any] = {"model": "m", "max_tokens": draw(st.integers(1, 5000))}
    system = [text_block(draw(words), draw(cache))] if draw(st.booleans()) else []
    if system:
        body["system"] = system
    body["messages"] = messages
    if draw(st.booleans()):
        body["tools"] = [
            {"name": "lookup", "description": "Look up.", "input_schema": {"type": "object"}}
        ]
        body["tool_choice"] = draw(
            st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "lookup"}])
        )
    if draw(st.booleans()):
        body["stop_sequences"] = [draw(words)]
    if draw(st.booleans()):
        body["temperature"] = draw(st.sampled_from([0, 0.5, 1]))
    return body


@settings(max_examples=200, deadline=None)
@given(conversations())
def test_an_anthropic_request_survives_the_round_trip_through_chat(body: dict[str, Any]) -> None:
    chat = read_request(body).body
    back = anthropic_request({"model": "m", **chat}, model="m", default_max_tokens=1, stream=False)
    assert back == body


def test_plain_strings_become_plain_chat_content() -> None:
    request = read_request(
        {
            "model": "m",
            "max_tokens": 5,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hi"}],
            "metadata": {"user_id": "u"},
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        }
    )
    assert request.body == {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 5,
        "user": "u",
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    assert not request.anthropic_only


def test_for_openai_takes_anthropics_hints_off() -> None:
    request = read_request(
        {
            "max_tokens": 5,
            "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": "boom",
                            "is_error": True,
                        }
                    ],
                },
            ],
        }
    )
    assert request.anthropic_only
    for_openai(request.body)
    assert request.body["messages"][0] == {
        "role": "system",
        "content": [{"type": "text", "text": "S"}],
    }
    assert request.body["messages"][2] == {
        "role": "tool",
        "tool_call_id": "t",
        "content": "Error: boom",
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"max_tokens": 5, "messages": []}, "messages"),
        ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5},
            "temperature",
        ),
    ],
)
def test_invalid_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        read_request(body)
    assert refused.value.extra["param"] == param


USER = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"mcp_servers": []}, "mcp_servers"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "thinking"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"metadata": {"tenant": "a"}}, "metadata.tenant"),
        ({"service_tier": "standard_only"}, "service_tier"),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "x", "lang": "en"}]}
                ]
            },
            "messages[0].content[0].lang",
        ),
        (
            {"tools": [{"name": "f", "input_schema": {}, "input_examples": [{"a": 1}]}]},
            "tools[0].input_examples",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "image", "source": {}}],
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].content[0].type",
        ),
    ],
)
def test_what_cannot_cross_to_chat_is_refused(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(Untranslatable) as refused:
        read_request({"max_tokens": 5, "messages": USER, **extra})
    assert refused.value.error_code == "untranslatable"
    assert refused.value.extra["param"] == param


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 3}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"temperature": 1.5}, "temperature"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "name": "bob", "content": "x"}]}, "messages[0].name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
            "tools[0].function.strict",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
    ],
)
def test_what_cannot_cross_to_anthropic_is_refused(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(Untranslatable) as refused:
        anthropic_request(
            {"messages": USER, **extra}, model="m", default_max_tokens=5, stream=False
        )
    assert refused.value.extra["param"] == param


def test_an_assistant_message_sent_back_as_the_openai_sdk_dumps_it_crosses() -> None:
    replayed = {
        "role": "assistant",
        "content": "Hi.",
        "refusal": None,
        "annotations": [],
        "audio": None,
        "function_call": None,
        "tool_calls": None,
    }
    sent = anthropic_request(
        {
            "messages": [*USER, replayed],
            "tools": [{"type": "function", "function": {"name": "f", "strict": False}}],
        },
        model="m",
        default_max_tokens=5,
        stream=False,
    )
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Hi."}],
    }


def test_neutral_chat_values_cross_and_the_default_max_tokens_fills_in() -> None:
    body = {"messages": USER, "n": 1, "logprobs": False, "presence_penalty": 0, "store": False}
    sent = anthropic_request(body, model="claude", default_max_tokens=64000, stream=True)
    assert sent == {
        "model": "claude",
        "max_tokens": 64000,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
        "stream": True,
    }


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude",
    "content": [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "fox", "n": 2}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "output_tokens": 7,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 20,
    },
}


def test_an_anthropic_message_survives_the_round_trip_through_chat() -> None:
    chat, text, finish, usage = chat_completion(MESSAGE)
    assert (text, finish) == ("Checking.", "tool_calls")
    assert usage == TokenUsage(33, 7, cached_tokens=20, cache_write_tokens=3, reported=True)
    assert chat["usage"]["prompt_tokens"] == 33
    assert chat["usage"]["prompt_tokens_details"] == {"cached_tokens": 20, "cache_write_tokens": 3}
    back = message_json(
        message_id="msg_1",
        model="claude",
        text=text,
        finish_reason=finish,
        usage=usage,
        raw=orjson.dumps(chat),
    )
    assert back == MESSAGE


def anthropic_events(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream Anthropic sends for ``message``."""
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {**message["usage"], "output_tokens": 1},
    }
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}, {"type": "ping"}]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                }
            )
            for piece in (block["text"][:3], block["text"][3:]):
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    }
                )
        else:
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {**block, "input": {}},
                }
            )
            encoded = orjson.dumps(block["input"]).decode()
            for piece in (encoded[:4], encoded[4:]):
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    }
                )
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        }
    )
    events.append({"type": "message_stop"})
    return events


def accumulate(stream: bytes) -> dict[str, Any]:
    """What a client builds from Anthropic's events (the SDK's accumulation, in short)."""
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for name, data in sse_events(stream.decode()):
        event = orjson.loads(data)
        assert event["type"] == name
        if name == "message_start":
            message = event["message"]
        elif name == "content_block_start":
            message["content"].append(event["content_block"])
        elif name == "content_block_delta":
            block = message["content"][event["index"]]
            if event["delta"]["type"] == "text_delta":
                block["text"] += event["delta"]["text"]
            else:
                partial[event["index"]] = (
                    partial.get(event["index"], "") + event["delta"]["partial_json"]
                )
        elif name == "content_block_stop" and event["index"] in partial:
            message["content"][event["index"]]["input"] = orjson.loads(partial[event["index"]])
        elif name == "message_delta":
            message.update(event["delta"])
            message["usage"].update(event["usage"])
    return message


def test_an_anthropic_stream_survives_the_round_trip_through_chat_chunks() -> None:
    reader = ChunkReader()
    writer = EventWriter("msg_1", "claude")
    out = b""
    for event in anthropic_events(MESSAGE):
        _, payload = reader.read(event)
        if payload is not None and not reader.done:
            out += writer.chat_chunk(orjson.loads(payload))
    assert reader.done
    assert reader.finish_reason == "tool_calls"
    assert reader.usage == TokenUsage(33, 7, cached_tokens=20, cache_write_tokens=3, reported=True)
    out += writer.finish(reader.finish_reason, reader.usage)
    assert accumulate(out) == MESSAGE


def test_an_engine_text_stream_is_one_text_block() -> None:
    writer = EventWriter("msg_2", "extractive")
    out = writer.text("Hello") + writer.text(" there") + writer.finish("stop", TokenUsage(5, 2))
    message = accumulate(out)
    assert message["content"] == [{"type": "text", "text": "Hello there"}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"] == {
        "input_tokens": 5,
        "output_tokens": 2,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_anthropic_usage_and_kibans_are_inverse() -> None:
    fields = {
        "input_tokens": 4,
        "output_tokens": 9,
        "cache_creation_input_tokens": 2,
        "cache_read_input_tokens": 6,
    }
    usage = TokenUsage.from_anthropic(fields)
    assert usage is not None
    assert usage.prompt_tokens == 12
    assert usage.anthropic_json() == fields
    assert TokenUsage.from_anthropic("nonsense") is None


def test_cache_reads_and_writes_have_their_own_prices() -> None:
    price = Price(
        input=Decimal("3"),
        output=Decimal("15"),
        cached_input=Decimal("0.3"),
        cache_write=Decimal("3.75"),
    )
    # 1,000 prompt tokens: 600 read from the cache, 100 written to it, 300 plain; 200 out.
    cost = price.cost(1000, 200, cached_tokens=600, cache_write_tokens=100)
    expected = (
        300 * Decimal("3") + 600 * Decimal("0.3") + 100 * Decimal("3.75") + 200 * Decimal("15")
    ) / 1_000_000
    assert cost == expected
    # Without a cache-write price, a written token costs the input price.
    plain = Price(input=Decimal("3"), output=Decimal("15"), cached_input=Decimal("0.3"))
    assert plain.cost(1000, 0, 0, 100) == plain.cost(1000, 0)
    # A report that claims more cached tokens than the prompt had cannot make the cost negative.
    assert price.cost(10, 0, cached_tokens=8, cache_write_tokens=8) >= 0
