"""One flow for every AI surface: a request's ``Intent`` in, its ``Answer`` (or stream) out.

A surface (``/ai/test``, ``/ai/stream``, ``/v1/chat/completions`` ...) reads its wire format into an
``Intent`` and writes the ``Answer`` back in it (``kiban.gateway.surfaces``). The steps between
exist once, here, each testable alone:

1. ``prepare``: resolve the model; admit the call, reserving the prompt's tokens (and, grounded,
   the context's budget, before retrieval: decision 0015); retrieve; build the grounded prompt, or
   find nothing relevant. There is no request session: the admission and retrieval each hold
   their own short transaction, so no pool connection is held while the model answers;
2. ``answer`` or ``open_stream``: the provider, or the fixed "nothing relevant" answer;
3. the call's one finish (``Call.finish``; for a stream, ``CallStream`` owns it).

A surface that is not a chat completion (``/v1/embeddings``) runs its own steps in
``Surface.respond``, through the same call, admission and finish.

``serve`` composes them for a route, and puts the limit headers on the response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from kiban.auth import Principal
from kiban.core.errors import ClientDisconnected
from kiban.gateway import grounding
from kiban.gateway.call import Call, Outcome
from kiban.gateway.providers.base import CompletionStream, ProviderRequest, TokenUsage
from kiban.gateway.providers.extractive import NO_ANSWER, fixed_stream
from kiban.gateway.service import Gateway
from kiban.gateway.streaming import CallStream, StreamFormat
from kiban.gateway.tokenizer import count_messages, count_request_extras, message_text
from kiban.knowledge import RetrievedChunk
from kiban.models import UsageStatus


@dataclass(frozen=True)
class Limits:
    """What a request asked for in completion tokens, and under which key."""

    requested: int | None
    key: str = "max_completion_tokens"


@dataclass
class Intent:
    """One AI request, whatever wire format it came in."""

    model: str | None  # the name the request gave (None: the default model)
    # The OpenAI chat body for the upstream: ``messages``, and every field passed through.
    body: dict[str, Any]
    limits: Limits
    # A bare question (``/ai``): grounding writes the whole prompt around it. Without one, the
    # conversation in ``body`` is kept and the documents are put before it.
    prompt: str | None = None
    stream: bool = False
    grounded: bool = False
    top_k: int | None = None  # chunks to retrieve (None: ``KIBAN_GATEWAY_TOP_K``)
    include_usage: bool = True  # a streamed answer ends with its usage


@dataclass(frozen=True)
class Answer:
    """A whole answer, recorded: what a surface writes back."""

    text: str
    finish_reason: str | None
    outcome: Outcome
    raw: bytes | None = None  # the upstream's own OpenAI-shaped body, to pass through


class Surface:
    """A wire format: how a request is read into an ``Intent`` and its answer written back."""

    endpoint: str  # the ledger's name for the surface
    streamed: bool = False  # what the ledger records while the body is not read yet

    def parse(self, raw: bytes) -> Intent:
        raise NotImplementedError

    def body(self, call: Call, answer: Answer) -> bytes:
        raise NotImplementedError

    def stream_format(self, call: Call, intent: Intent) -> StreamFormat:
        raise NotImplementedError

    async def respond(self, gateway: Gateway, call: Call, intent: Intent) -> Answer | None:
        """A surface that is not a chat completion (``/v1/embeddings``) admits, answers and
        finishes its call here; None (the default) runs the chat steps below."""
        return None


async def serve(
    surface: Surface,
    request: Request,
    principal: Principal,
    gateway: Gateway,
) -> Response:
    """One AI request through a surface, from its body to its response (JSON or a stream)."""
    call = gateway.begin(request, principal, surface.endpoint, streamed=surface.streamed)
    async with call.guard():
        call.model_name = gateway.catalog.default
        try:
            raw = await request.body()
        except ClientDisconnect as e:  # recorded as such, not as a server error
            raise ClientDisconnected() from e
        intent = surface.parse(raw)
        call.streamed = intent.stream
        own = await surface.respond(gateway, call, intent)
        if own is not None:
            return Response(
                surface.body(call, own), media_type="application/json", headers=call.limit_headers
            )
        prepared = await prepare(gateway, call, intent)
        if intent.stream:
            stream, success = await open_stream(gateway, call, prepared)
            return CallStream(
                call,
                stream,
                surface.stream_format(call, intent),
                keepalive_seconds=gateway.settings.gateway_stream_keepalive_seconds,
                headers=call.limit_headers,
                success_status=success,
            )
        result = await answer(gateway, call, prepared)
    return Response(
        surface.body(call, result), media_type="application/json", headers=call.limit_headers
    )


async def prepare(gateway: Gateway, call: Call, intent: Intent) -> ProviderRequest | None:
    """Resolve the model, admit the call, retrieve and build the prompt (None: nothing relevant)."""
    call.model_name = intent.model or gateway.catalog.default
    spec = gateway.catalog.resolve(intent.model)
    call.model = spec
    messages: list[dict[str, Any]] = intent.body["messages"]
    question = intent.prompt if intent.prompt is not None else last_user_text(messages)
    call.prompt_text = intent.prompt if intent.prompt is not None else transcript(messages)
    # The extractive engine can only quote documents: it is always grounded.
    grounded = intent.grounded or spec.provider == "extractive"
    # Tool schemas and earlier tool calls are billed as prompt too: reserve them.
    extras = count_request_extras(intent.body, spec.encoding)
    prompt_tokens = count_messages(messages, spec.encoding) + extras
    reserve = prompt_tokens + (gateway.grounding_reserve(spec) if grounded else 0)
    ticket = await call.admit(reserve, intent.limits.requested)
    context: list[RetrievedChunk] = []
    if grounded:
        chunks = await gateway.retrieve(call, question, top_k=intent.top_k) if question else []
        if not chunks:
            return None
        budget = gateway.settings.gateway_context_token_budget
        if intent.prompt is not None:
            prompt = grounding.build_prompt(
                intent.prompt, chunks, budget_tokens=budget, encoding=spec.encoding
            )
        else:
            prompt = grounding.ground_messages(
                messages, chunks, budget_tokens=budget, encoding=spec.encoding
            )
        call.sources = [grounding.source(c) for c in prompt.used]
        context = prompt.used
        intent.body["messages"] = prompt.messages
        prompt_tokens = count_messages(prompt.messages, spec.encoding) + extras
    apply_cap(intent.body, intent.limits, ticket.max_completion_tokens)
    request = ProviderRequest(spec, intent.body, prompt_tokens, question, context)
    call.route = request.route  # the router writes where it went; the ledger reads it
    return request


async def answer(gateway: Gateway, call: Call, prepared: ProviderRequest | None) -> Answer:
    """Ask the provider (or answer "nothing relevant"); record the call."""
    if prepared is None:
        outcome = await call.finish(
            UsageStatus.NO_CONTEXT, usage=TokenUsage(), response_text=NO_ANSWER
        )
        return Answer(NO_ANSWER, "stop", outcome)
    completion = await gateway.provider(prepared.model).complete(prepared)
    outcome = await call.finish(
        UsageStatus.OK,
        usage=completion.usage,
        response_text=completion.text,
        served=completion.model,
    )
    return Answer(completion.text, completion.finish_reason, outcome, completion.raw)


async def open_stream(
    gateway: Gateway, call: Call, prepared: ProviderRequest | None
) -> tuple[CompletionStream, str]:
    """The provider's stream (or "nothing relevant", word by word), and the status it ends in."""
    if prepared is None:
        assert call.model is not None
        return fixed_stream(NO_ANSWER, call.model), UsageStatus.NO_CONTEXT
    return await gateway.provider(prepared.model).stream(prepared), UsageStatus.OK


def apply_cap(body: dict[str, Any], limits: Limits, cap: int | None) -> None:
    """Send the admission's completion cap upstream, under the key the client used."""
    if cap is None:
        return
    body.pop(
        "max_tokens" if limits.key == "max_completion_tokens" else "max_completion_tokens", None
    )
    body[limits.key] = cap


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The latest user message: the question a grounded request retrieves for."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def transcript(messages: list[dict[str, Any]]) -> str:
    """The conversation as text, for the ledger's prompt column."""
    return "\n".join(f"{m.get('role')}: {message_text(m.get('content'))}" for m in messages)
