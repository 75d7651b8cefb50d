"""``/v1``: the official ``openai`` SDK against kiban, sync and streamed, one ledger record each."""

from __future__ import annotations

import httpx
import openai
import pytest
from fastapi import FastAPI

from kiban.core.metrics import REGISTRY
from kiban.gateway.providers.extractive import NO_ANSWER
from tests.factories import ledger, upload
from tests.gateway.gateway_helpers import DEFAULT_REPLY, FakeUpstream

QUESTION = [{"role": "user", "content": "Say something about foxes."}]


def sdk(app: FastAPI, headers: dict[str, str]) -> openai.AsyncOpenAI:
    """The official SDK, pointed at kiban through the ASGI transport, with a kiban credential."""
    token = headers["Authorization"].split(" ", 1)[1]
    return openai.AsyncOpenAI(
        api_key=token,
        base_url="http://testserver/v1",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
    )


async def test_sdk_chat_completion_passes_the_upstream_answer_through(
    app: FastAPI, user_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    client = sdk(app, user_headers)
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    [sent] = upstream.requests
    assert sent.body["messages"] == QUESTION  # unchanged: no grounding unless asked
    assert sent.headers["authorization"] == "Bearer sk-test-upstream"
    [record] = await ledger(app)
    assert record.endpoint == "chat_completions"
    assert record.status == "ok"
    assert not record.streamed
    assert record.prompt_tokens == completion.usage.prompt_tokens
    assert record.completion_tokens == completion.usage.completion_tokens
    assert record.estimated_cost is not None
    assert record.estimated_cost > 0


async def test_sdk_streamed_completion_includes_usage(
    app: FastAPI, user_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    client = sdk(app, user_headers)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=QUESTION,
        stream=True,  # type: ignore[arg-type]
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == DEFAULT_REPLY
    assert usage is not None
    assert upstream.requests[0].body["stream_options"] == {"include_usage": True}
    [record] = await ledger(app)
    assert record.streamed
    assert record.status == "ok"
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


async def test_streamed_and_unstreamed_agree_on_usage_and_record_shape(
    app: FastAPI, user_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    client = sdk(app, user_headers)
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)  # type: ignore[arg-type]
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=QUESTION,
        stream=True,  # type: ignore[arg-type]
    )
    streamed_usage = None
    async for chunk in stream:
        streamed_usage = chunk.usage or streamed_usage
    assert completion.usage is not None
    assert streamed_usage is not None
    assert completion.usage.model_dump() == streamed_usage.model_dump()
    sync_record, stream_record = await ledger(app)
    fields = (
        "status",
        "model",
        "provider",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "deployment",
        "attempts",
        "estimated_cost",
        "response_text",
        "error_code",
    )
    assert {f: getattr(sync_record, f) for f in fields} == {
        f: getattr(stream_record, f) for f in fields
    }
    assert (sync_record.streamed, stream_record.streamed) == (False, True)
    assert stream_record.time_to_first_token_ms is not None


async def test_client_can_opt_out_of_the_usage_chunk(
    app: FastAPI, user_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    client = sdk(app, user_headers)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": False},  # type: ignore[arg-type]
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in chunks)
    [record] = await ledger(app)
    assert record.completion_tokens == len(DEFAULT_REPLY.split(" "))


async def test_unknown_model_is_an_openai_shaped_404(
    app: FastAPI, user_headers: dict[str, str], client: httpx.AsyncClient
) -> None:
    response = await client.post(
        "/v1/chat/completions", headers=user_headers, json={"model": "gpt-9", "messages": QUESTION}
    )
    assert response.status_code == 404
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "model",
        "model_not_found",
    )
    with pytest.raises(openai.NotFoundError):
        await sdk(app, user_headers).chat.completions.create(model="gpt-9", messages=QUESTION)  # type: ignore[arg-type]
    records = await ledger(app)
    assert [r.status for r in records] == ["rejected", "rejected"]
    assert records[0].model == "gpt-9"
    # The metric does not take the client's model name as a label (unbounded series otherwise).
    assert (
        REGISTRY.get_sample_value(
            "kiban_ai_requests_total",
            {"model": "gpt-9", "endpoint": "chat_completions", "status": "rejected"},
        )
        is None
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-4o-mini"}, "messages"),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
        ),
        ({"model": "gpt-4o-mini", "messages": QUESTION, "max_tokens": 0}, "max_tokens"),
        ({"model": "gpt-4o-mini", "messages": QUESTION, "stream": "yes"}, "stream"),
        ({"model": 5, "messages": QUESTION}, "model"),
    ],
)
async def test_bad_request_names_the_parameter(
    app: FastAPI,
    user_headers: dict[str, str],
    client: httpx.AsyncClient,
    body: dict[str, object],
    param: str,
) -> None:
    response = await client.post("/v1/chat/completions", headers=user_headers, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    [record] = await ledger(app)
    assert record.status == "rejected"


async def test_body_that_is_not_json_is_a_400(
    app: FastAPI, user_headers: dict[str, str], client: httpx.AsyncClient
) -> None:
    response = await client.post("/v1/chat/completions", headers=user_headers, content=b"{nope")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_missing_credentials_are_an_openai_shaped_401(app: FastAPI) -> None:
    client = openai.AsyncOpenAI(
        api_key="nope",
        base_url="http://testserver/v1",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
    )
    with pytest.raises(openai.AuthenticationError) as raised:
        await client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)  # type: ignore[arg-type]
    assert raised.value.type == "authentication_error"


async def test_models_are_listed_in_openai_shape(
    app: FastAPI, user_headers: dict[str, str]
) -> None:
    client = sdk(app, user_headers)
    names = [m.id async for m in client.models.list()]
    assert {"extractive", "gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1"} <= set(names)
    model = await client.models.retrieve("extractive")
    assert model.owned_by == "kiban"


async def test_grounding_is_opt_in_and_returns_sources(
    app: FastAPI, user_headers: dict[str, str], client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    await upload(
        client,
        user_headers,
        "foxes.txt",
        "Foxes are small omnivores. Foxes live on every continent except Antarctica.",
        content_type="text/plain",
        expect=201,
    )
    completion = await sdk(app, user_headers).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Where do foxes live?"}],
        extra_body={"kiban": {"grounded": True}},
    )
    sent = upstream.requests[0].body
    assert "kiban" not in sent
    assert sent["messages"][0]["role"] == "system"
    assert "Antarctica" in sent["messages"][0]["content"]
    assert sent["messages"][1] == {"role": "user", "content": "Where do foxes live?"}
    extension = completion.model_extra["kiban"]  # type: ignore[index]
    assert extension["sources"][0]["filename"] == "foxes.txt"


async def test_extractive_model_on_v1_without_documents_says_so(
    app: FastAPI, user_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    client = sdk(app, user_headers)
    completion = await client.chat.completions.create(model="extractive", messages=QUESTION)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == NO_ANSWER
    assert completion.usage is not None
    assert completion.usage.total_tokens == 0
    stream = await client.chat.completions.create(
        model="extractive", messages=QUESTION, stream=True
    )  # type: ignore[arg-type]
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == NO_ANSWER
    assert [r.status for r in await ledger(app)] == ["no_context", "no_context"]
    assert upstream.requests == []


async def test_grounding_extension_top_k_limits_the_sources(
    app: FastAPI, user_headers: dict[str, str], client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    await upload(
        client,
        user_headers,
        "foxes.txt",
        "Foxes live on every continent.",
        content_type="text/plain",
        expect=201,
    )
    await upload(
        client,
        user_headers,
        "more-foxes.txt",
        "Red foxes live in forests.",
        content_type="text/plain",
        expect=201,
    )
    question = [{"role": "user", "content": "Where do foxes live?"}]
    sources = []
    for top_k in (None, 1):
        extension = {"grounded": True} | ({"top_k": top_k} if top_k else {})
        completion = await sdk(app, user_headers).chat.completions.create(
            model="gpt-4o-mini",
            messages=question,  # type: ignore[arg-type]
            extra_body={"kiban": extension},
        )
        sources.append(completion.model_extra["kiban"]["sources"])  # type: ignore[index]
    assert len(sources[0]) == 2
    assert len(sources[1]) == 1


async def test_tool_schemas_count_toward_the_prompt_the_plan_admits(
    app: FastAPI, user_headers: dict[str, str], client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    # The free plan admits 8,000 prompt tokens; the messages are short, the tool schema is not.
    tool = {
        "type": "function",
        "function": {"name": "lookup", "description": "fox " * 9000, "parameters": {}},
    }
    response = await client.post(
        "/v1/chat/completions",
        headers=user_headers,
        json={"model": "gpt-4o-mini", "messages": QUESTION, "tools": [tool]},
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "prompt_too_large"
    assert upstream.requests == []
    [record] = await ledger(app)
    assert (record.status, record.error_code) == ("rejected", "prompt_too_large")
