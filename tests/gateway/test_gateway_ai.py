"""``/ai/test`` and ``/ai/stream``: grounded answers, the extractive engine, the ledger."""

from __future__ import annotations

from decimal import Decimal

import httpx
import orjson
import pytest
from fastapi import FastAPI

from kiban.gateway.providers.extractive import NO_ANSWER
from tests.factories import ledger, upload
from tests.gateway.gateway_helpers import DEFAULT_REPLY, FakeUpstream, sse_events

DOC = (
    "Kiban stores every AI request in a usage ledger. "
    "The ledger records tokens, cost and latency for each request. "
    "Tokyo is the capital of Japan. "
    "Refunds are processed within five business days of the request."
)


async def test_grounded_question_without_documents_answers_no_context_without_upstream(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    response = await client.post(
        "/ai/test", headers=user_headers, json={"prompt": "What is kiban?"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert next(iter(body)) == "result"
    assert body["result"] == NO_ANSWER
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert body["status"] == "no_context"
    assert body["sources"] == []
    assert upstream.requests == []
    [record] = await ledger(app)
    assert record.status == "no_context"
    assert record.request_id == body["request_id"] == response.headers["x-request-id"]
    assert record.total_tokens == 0


async def test_grounded_question_is_answered_by_the_upstream_with_sources_and_cost(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    await upload(client, user_headers, "refunds.txt", DOC, content_type="text/plain", expect=201)
    response = await client.post(
        "/ai/test",
        headers=user_headers,
        json={"prompt": "When are refunds processed?", "model": "gpt-4o-mini"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"] == DEFAULT_REPLY
    assert body["model"] == "gpt-4o-mini"
    assert body["sources"]
    assert body["sources"][0]["filename"] == "refunds.txt"
    [sent] = upstream.requests
    prompt = sent.body["messages"][1]["content"]
    assert "<documents>" in prompt
    assert "Refunds are processed" in prompt
    expected = upstream._usage(sent.body, len(DEFAULT_REPLY.split(" ")))
    assert body["usage"]["prompt_tokens"] == expected["prompt_tokens"]
    cost = (
        Decimal(expected["prompt_tokens"]) * Decimal("0.15")
        + Decimal(expected["completion_tokens"]) * Decimal("0.60")
    ) / Decimal(1_000_000)
    assert Decimal(body["estimated_cost"]) == cost
    [record] = await ledger(app)
    assert record.status == "ok"
    assert record.estimated_cost == cost
    assert record.prompt_tokens == expected["prompt_tokens"]
    assert record.source_ids
    assert record.source_ids[0]["document_id"] == body["sources"][0]["document_id"]


async def test_extractive_engine_quotes_the_best_sentence(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    await upload(client, user_headers, "facts.txt", DOC, content_type="text/plain", expect=201)
    response = await client.post(
        "/ai/test",
        headers=user_headers,
        json={"prompt": "What is the capital of Japan?", "model": "extractive"},
    )
    body = response.json()
    assert body["result"] == "Tokyo is the capital of Japan."
    assert body["model"] == "extractive"
    assert body["usage"]["completion_tokens"] > 0
    assert body["estimated_cost"] == "0"
    assert upstream.requests == []
    [record] = await ledger(app)
    assert record.provider == "extractive"
    assert record.estimated_cost == 0


async def test_stream_sends_deltas_then_one_done_event(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    await upload(client, user_headers, "facts.txt", DOC, content_type="text/plain", expect=201)
    response = await client.post(
        "/ai/stream", headers=user_headers, json={"prompt": "When are refunds processed?"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    deltas = [orjson.loads(d)["text"] for e, d in events if e == "delta"]
    assert "".join(deltas) == DEFAULT_REPLY
    [done] = [orjson.loads(d) for e, d in events if e == "done"]
    assert events[-1][0] == "done"
    assert done["usage"]["completion_tokens"] == len(DEFAULT_REPLY.split(" "))
    assert done["timings"]["time_to_first_token_ms"] is not None
    assert done["sources"][0]["filename"] == "facts.txt"
    [record] = await ledger(app)
    assert record.streamed
    assert record.status == "ok"
    assert record.completion_tokens == done["usage"]["completion_tokens"]
    assert record.response_text == DEFAULT_REPLY
    assert Decimal(done["estimated_cost"]) == record.estimated_cost


async def test_ungrounded_question_goes_straight_to_the_model(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    response = await client.post(
        "/ai/test",
        headers=user_headers,
        json={"prompt": "Say hi", "grounded": False, "max_tokens": 3},
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"] == "The quick brown"
    [sent] = upstream.requests
    assert sent.body["messages"] == [{"role": "user", "content": "Say hi"}]
    assert sent.body["max_completion_tokens"] == 3


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "temperature": 9}, "temperature"),
    ],
)
async def test_invalid_question_is_a_422_and_recorded_as_rejected(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    app: FastAPI,
    payload: dict[str, object],
    field: str,
) -> None:
    response = await client.post("/ai/test", headers=user_headers, json=payload)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["fields"][0]["field"] == field
    [record] = await ledger(app)
    assert record.status == "rejected"
    assert record.error_code == "validation_error"


async def test_unknown_model_is_a_404(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI
) -> None:
    response = await client.post(
        "/ai/test", headers=user_headers, json={"prompt": "hi", "model": "gpt-9"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    [record] = await ledger(app)
    assert record.status == "rejected"
    assert record.model == "gpt-9"


async def test_metrics_count_requests_tokens_and_cost(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    from kiban.core.metrics import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    requests = sample(
        "kiban_ai_requests_total", model="gpt-4o-mini", endpoint="ai_test", status="ok"
    )
    tokens = sample("kiban_ai_tokens_total", model="gpt-4o-mini", kind="completion")
    cost = sample("kiban_ai_cost_usd_total", model="gpt-4o-mini")
    response = await client.post(
        "/ai/test", headers=user_headers, json={"prompt": "hi", "grounded": False}
    )
    body = response.json()
    assert (
        sample("kiban_ai_requests_total", model="gpt-4o-mini", endpoint="ai_test", status="ok")
        == requests + 1
    )
    assert sample("kiban_ai_tokens_total", model="gpt-4o-mini", kind="completion") == (
        tokens + body["usage"]["completion_tokens"]
    )
    assert sample("kiban_ai_cost_usd_total", model="gpt-4o-mini") == pytest.approx(
        cost + float(body["estimated_cost"])
    )


async def test_cached_prompt_tokens_are_billed_at_the_cached_rate(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    upstream.cached_tokens = 4
    body = (
        await client.post(
            "/ai/test", headers=user_headers, json={"prompt": "hi", "grounded": False}
        )
    ).json()
    [record] = await ledger(app)
    assert record.cached_tokens == 4
    prompt, completion = body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]
    expected = (
        (prompt - 4) * Decimal("0.15") + 4 * Decimal("0.075") + completion * Decimal("0.60")
    ) / Decimal(1_000_000)
    assert record.estimated_cost == expected


async def test_upstream_without_usage_is_counted_locally(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, upstream: FakeUpstream
) -> None:
    upstream.report_usage = False
    body = (
        await client.post(
            "/ai/test", headers=user_headers, json={"prompt": "hi", "grounded": False}
        )
    ).json()
    from kiban.gateway.tokenizer import count_text

    assert body["usage"]["completion_tokens"] == count_text(DEFAULT_REPLY)
    assert body["usage"]["prompt_tokens"] > 0


async def test_access_log_line_carries_model_tokens_and_cost(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="kiban.access")
    await client.post("/ai/test", headers=user_headers, json={"prompt": "hi", "grounded": False})
    lines = [r.msg for r in caplog.records if r.name == "kiban.access" and isinstance(r.msg, dict)]
    [line] = [entry for entry in lines if entry.get("path") == "/ai/test"]
    assert line["model"] == "gpt-4o-mini"
    assert line["completion_tokens"] == len(DEFAULT_REPLY.split(" "))
    assert line["cost"] is not None


async def test_truncated_content_policy_keeps_the_first_characters(
    make_settings,
    gateway_settings,  # type: ignore[no-untyped-def]
) -> None:
    from kiban.app import create_app
    from tests.conftest import RunningApp, auth_headers, create_user, make_client

    overrides = {"gateway_content_policy": "truncated", "gateway_content_max_chars": 5}
    async with RunningApp(create_app(make_settings(**{**gateway_settings, **overrides}))) as app:
        async with app.state.sessionmaker() as session:
            user = await create_user(session)
        async with make_client(app) as client:
            await client.post(
                "/ai/test",
                headers=auth_headers(app, user),
                json={"prompt": "hello world", "grounded": False},
            )
        [row] = await ledger(app)
        assert (row.prompt_text, row.response_text) == ("hello", DEFAULT_REPLY[:5])
