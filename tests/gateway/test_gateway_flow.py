"""The one flow: every AI surface prepares, answers, finishes and sets its headers alike."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from kiban.gateway.admission import Admission, AdmissionRequest, Ticket, Usage
from kiban.gateway.providers.extractive import NO_ANSWER
from tests.factories import ledger
from tests.gateway.gateway_helpers import FakeUpstream

QUESTION = "Say something short about foxes."
MESSAGES = [{"role": "user", "content": QUESTION}]


class RecordingAdmission:
    """The app's admission, with every request it was asked to admit kept."""

    def __init__(self, inner: Admission) -> None:
        self.inner = inner
        self.requests: list[AdmissionRequest] = []

    async def admit(self, request: AdmissionRequest) -> Ticket:
        self.requests.append(request)
        return await self.inner.admit(request)

    async def settle(
        self, ticket: Ticket, usage: Usage, record: dict[str, Any] | None = None
    ) -> None:
        await self.inner.settle(ticket, usage, record)


@pytest.fixture
def admission(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> RecordingAdmission:
    recording = RecordingAdmission(app.state.gateway.admission)
    monkeypatch.setattr(app.state.gateway, "admission", recording)
    return recording


def surfaces(*, grounded: bool) -> list[tuple[str, dict[str, Any]]]:
    """The same question, capped at 5 completion tokens, as each surface reads it."""
    ask = {"prompt": QUESTION, "model": "gpt-4o-mini", "grounded": grounded, "max_tokens": 5}
    chat: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5}
    if grounded:
        chat["kiban"] = {"grounded": True}
    surfaces = [
        ("/ai/test", ask),
        ("/ai/stream", ask),
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", {**chat, "stream": True}),
    ]
    if not grounded:  # Anthropic's Messages API has no grounding extension
        message = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5}
        surfaces += [("/v1/messages", message), ("/v1/messages", {**message, "stream": True})]
    return surfaces


async def test_one_question_is_reserved_and_sent_alike_by_every_surface(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    app: FastAPI,
    upstream: FakeUpstream,
    admission: RecordingAdmission,
) -> None:
    for path, body in surfaces(grounded=False):
        response = await client.post(path, headers=user_headers, json=body)
        assert response.status_code == 200, response.text
        assert "x-quota-remaining" in response.headers  # the limit headers, on every surface
    reserved = {(r.prompt_tokens, r.max_completion_tokens) for r in admission.requests}
    assert len(admission.requests) == 6
    assert len(reserved) == 1
    assert [r.body["messages"] for r in upstream.requests] == [MESSAGES] * 6
    records = await ledger(app)
    assert [(r.endpoint, r.streamed, r.status) for r in records] == [
        ("ai_test", False, "ok"),
        ("ai_stream", True, "ok"),
        ("chat_completions", False, "ok"),
        ("chat_completions", True, "ok"),
        ("messages", False, "ok"),
        ("messages", True, "ok"),
    ]
    assert len({(r.prompt_tokens, r.completion_tokens, r.estimated_cost) for r in records}) == 1


async def test_nothing_relevant_is_answered_alike_by_every_surface(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    app: FastAPI,
    upstream: FakeUpstream,
    admission: RecordingAdmission,
) -> None:
    for path, body in surfaces(grounded=True):
        response = await client.post(path, headers=user_headers, json=body)
        assert response.status_code == 200, response.text
        assert "x-quota-remaining" in response.headers
        assert NO_ANSWER.split()[0] in response.text
    # Grounded: each reserved the question and the same context budget, before retrieval.
    assert len({r.prompt_tokens for r in admission.requests}) == 1
    assert upstream.requests == []
    records = await ledger(app)
    assert [(r.status, r.total_tokens, r.response_text) for r in records] == [
        ("no_context", 0, NO_ANSWER)
    ] * 4


async def test_a_client_that_leaves_before_its_body_is_read_is_recorded_as_such(
    app: FastAPI, user_headers: dict[str, str]
) -> None:
    # Raw ASGI: the client sends its headers, then goes (http.disconnect) before any body.
    headers = [(k.lower().encode(), v.encode()) for k, v in user_headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"host", b"kiban"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("kiban", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 499  # not a 500: the server did nothing wrong
    (record,) = await ledger(app)
    assert (record.endpoint, record.error_code) == ("chat_completions", "client_disconnected")
