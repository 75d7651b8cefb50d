"""``POST /v1/embeddings``: the official SDK against kiban, metered and recorded like chat.

The local embedder (multilingual-e5-small in process) serves most tests; the remote one is driven
through the fake OpenAI-compatible upstream over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from kiban.app import create_app
from kiban.knowledge.embedding import LOCAL_MODEL
from kiban.models.knowledge import ChunkVector
from kiban.settings import Settings
from tests.conftest import RunningApp, auth_headers, create_user
from tests.factories import ledger
from tests.fake_upstream import Fault
from tests.gateway.gateway_helpers import FakeUpstream
from tests.gateway.test_gateway_v1 import sdk


@pytest.fixture
async def local_app(
    make_settings: Callable[..., Settings], gateway_settings: dict[str, Any]
) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        **gateway_settings,
        embedder="local",
        embeddings_max_inputs=4,
        embeddings_max_input_tokens=64,
    )
    async with RunningApp(create_app(settings)) as running:
        yield running


async def _headers(app: FastAPI) -> dict[str, str]:
    async with app.state.sessionmaker() as s:
        return auth_headers(app, await create_user(s))


async def test_sdk_embeddings_create_returns_unit_vectors_and_is_recorded(
    local_app: FastAPI,
) -> None:
    client = sdk(local_app, await _headers(local_app))
    response = await client.embeddings.create(
        model=LOCAL_MODEL, input=["払い戻しの期限", "How do I get a refund?"]
    )
    assert response.model == LOCAL_MODEL
    assert [d.index for d in response.data] == [0, 1]
    vectors = np.array([d.embedding for d in response.data])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert response.usage.prompt_tokens > 0
    [record] = await ledger(local_app)
    assert (record.endpoint, record.status, record.model) == ("embeddings", "ok", LOCAL_MODEL)
    assert record.prompt_tokens == response.usage.prompt_tokens
    assert record.completion_tokens == 0
    assert record.estimated_cost == 0


async def test_float_and_base64_encodings_agree(local_app: FastAPI) -> None:
    headers = await _headers(local_app)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=local_app), base_url="http://testserver"
    ) as http:
        as_float = await http.post(
            "/v1/embeddings", headers=headers, json={"input": "refund", "encoding_format": "float"}
        )
        as_base64 = await http.post(
            "/v1/embeddings", headers=headers, json={"input": "refund", "encoding_format": "base64"}
        )
    assert as_float.status_code == as_base64.status_code == 200
    decoded = np.frombuffer(base64.b64decode(as_base64.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, as_float.json()["data"][0]["embedding"], atol=1e-6)
    assert "x-quota-remaining" in {k.lower() for k in as_float.headers}  # metered like chat


async def test_bad_inputs_are_refused_with_the_limit(local_app: FastAPI) -> None:
    headers = await _headers(local_app)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=local_app), base_url="http://testserver"
    ) as http:

        async def post(body: dict[str, Any]) -> httpx.Response:
            return await http.post("/v1/embeddings", headers=headers, json=body)

        empty = await post({"input": ""})
        assert (empty.status_code, empty.json()["error"]["param"]) == (400, "input[0]")
        assert (await post({"input": []})).status_code == 400
        assert (await post({"input": [[1, 2, 3]]})).status_code == 400
        large = await post({"input": "word " * 500})
        assert large.status_code == 413
        assert large.json()["error"]["code"] == "input_too_large"
        assert large.json()["error"]["limit"] == 64
        many = await post({"input": ["a", "b", "c", "d", "e"]})
        assert many.status_code == 413
        assert (many.json()["error"]["code"], many.json()["error"]["limit"]) == (
            "too_many_inputs",
            4,
        )
        unknown = await post({"input": "x", "model": "text-embedding-ada-002"})
        assert unknown.status_code == 404
        assert LOCAL_MODEL in unknown.json()["error"]["hint"]
        shortened = await post({"input": "x", "dimensions": 128})
        assert (shortened.status_code, shortened.json()["error"]["param"]) == (400, "dimensions")
    # Refused before admission: nothing reserved, nothing billed.
    assert all(r.estimated_cost in (None, 0) for r in await ledger(local_app))


async def test_the_embedding_model_is_listed(local_app: FastAPI) -> None:
    client = sdk(local_app, await _headers(local_app))
    names = [m.id async for m in client.models.list()]
    assert LOCAL_MODEL in names
    assert (await client.models.retrieve(LOCAL_MODEL)).id == LOCAL_MODEL


async def test_embeddings_are_authenticated(local_app: FastAPI) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=local_app), base_url="http://testserver"
    ) as http:
        response = await http.post("/v1/embeddings", json={"input": "x"})
    assert response.status_code == 401


async def test_without_an_embedder_embeddings_are_unavailable(
    app: FastAPI, user_headers: dict[str, str]
) -> None:
    client = sdk(app, user_headers)
    with pytest.raises(openai.APIStatusError) as raised:
        await client.embeddings.create(model=LOCAL_MODEL, input="x")
    assert raised.value.status_code == 503


async def test_a_remote_embedder_serves_v1_and_the_queue_over_http(
    make_settings: Callable[..., Settings],
    gateway_settings: dict[str, Any],
    upstream: FakeUpstream,
) -> None:
    settings = make_settings(
        **gateway_settings,
        embedder="openai",
        embedding_base_url=upstream.base_url,
        embedding_api_key="sk-embed",
        embedding_model="text-embedding-3-small",
    )
    async with RunningApp(create_app(settings)) as app:
        client = sdk(app, await _headers(app))
        response = await client.embeddings.create(
            model="text-embedding-3-small", input=["one two", "three"], dimensions=16
        )
        assert [len(d.embedding) for d in response.data] == [16, 16]
        assert np.allclose(response.data[0].embedding, FakeUpstream.embedding("one two", 16))
        assert response.usage.prompt_tokens == 5  # the upstream's count
        [sent] = [r for r in upstream.requests if "input" in r.body]
        assert sent.headers["authorization"] == "Bearer sk-embed"
        assert (sent.body["model"], sent.body["dimensions"]) == ("text-embedding-3-small", 16)
        [record] = await ledger(app)
        assert (record.endpoint, record.prompt_tokens) == ("embeddings", 5)
        assert record.estimated_cost is not None
        assert record.estimated_cost > 0
        # The background queue embeds uploads through the same upstream.
        upload = await httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ).post(
            "/ai/upload",
            headers=await _headers(app),
            files={"files": ("a.md", b"Refunds are paid back within 14 days.")},
        )
        assert upload.status_code == 201
        app.state.retriever.queue.notify()
        await asyncio.wait_for(app.state.retriever.queue.wait_idle(), 30)
        async with app.state.sessionmaker() as s:
            models = (await s.execute(select(ChunkVector.model, ChunkVector.dimensions))).all()
        assert models == [("text-embedding-3-small", 8)]


async def test_a_failing_remote_embedder_is_a_502_and_recorded(
    make_settings: Callable[..., Settings],
    gateway_settings: dict[str, Any],
    upstream: FakeUpstream,
) -> None:
    settings = make_settings(
        **gateway_settings,
        embedder="openai",
        embedding_base_url=upstream.base_url,
        embedding_model="text-embedding-3-small",
    )
    async with RunningApp(create_app(settings)) as app:
        upstream.script(Fault.error(500))
        client = sdk(app, await _headers(app))
        with pytest.raises(openai.APIStatusError) as raised:
            await client.embeddings.create(model="text-embedding-3-small", input="x")
        assert raised.value.status_code == 502
        [record] = await ledger(app)
        assert (record.endpoint, record.status) == ("embeddings", "error")


@pytest.fixture
def two_per_minute(plans_file: Path) -> Path:
    """The free plan allows two requests a minute."""
    shipped = plans_file.read_text()
    plans_file.write_text(
        re.sub(
            r"^requests_per_minute = 20$", "requests_per_minute = 2", shipped, count=1, flags=re.M
        )
    )
    return plans_file


async def test_embeddings_count_against_the_plans_rate_limit(
    make_settings: Callable[..., Settings],
    gateway_settings: dict[str, Any],
    two_per_minute: Path,
) -> None:
    settings = make_settings(**gateway_settings, embedder="local")
    async with RunningApp(create_app(settings)) as app:
        client = sdk(app, await _headers(app))
        await client.embeddings.create(model=LOCAL_MODEL, input="one")
        await client.embeddings.create(model=LOCAL_MODEL, input="two")
        with pytest.raises(openai.RateLimitError):
            await client.embeddings.create(model=LOCAL_MODEL, input="three")
        statuses = [r.status for r in await ledger(app)]
    assert statuses == ["ok", "ok", "rejected"]
