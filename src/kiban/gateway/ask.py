"""The ``/ai/test`` and ``/ai/stream`` flow: a question, grounded in the caller's documents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.core.errors import Unprocessable
from kiban.gateway import grounding
from kiban.gateway.call import Call, Outcome
from kiban.gateway.providers.base import CompletionStream, ProviderRequest, StreamChunk, TokenUsage
from kiban.gateway.providers.extractive import NO_ANSWER, fixed_stream
from kiban.gateway.schemas import AskRequest
from kiban.gateway.service import Gateway, Limits, apply_cap
from kiban.gateway.streaming import StreamFormat, sse
from kiban.gateway.tokenizer import count_messages
from kiban.models import UsageStatus


@dataclass
class Prepared:
    request: ProviderRequest | None  # None: nothing relevant was found, no provider is called


def parse_ask(raw: bytes) -> AskRequest:
    """The request body, validated (a 422 ``validation_error`` naming the fields otherwise)."""
    try:
        return AskRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        fields = [
            {
                "field": ".".join(str(p) for p in e["loc"]) or "body",
                "message": e["msg"],
                "type": e["type"],
            }
            for e in exc.errors()
        ]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        raise Unprocessable(
            f"Invalid request: {summary}", code="validation_error", extra={"fields": fields}
        ) from None


async def prepare(gateway: Gateway, session: AsyncSession, call: Call, ask: AskRequest) -> Prepared:
    """Resolve the model, admit the call, retrieve and build the prompt."""
    call.model_name = ask.model or gateway.catalog.default
    spec = gateway.catalog.resolve(ask.model)
    call.model = spec
    call.prompt_text = ask.prompt
    # The extractive engine can only quote documents: it is always grounded.
    grounded = ask.grounded or spec.provider == "extractive"
    question = [{"role": "user", "content": ask.prompt}]
    reserve = count_messages(question, spec.encoding)
    if grounded:
        reserve += gateway.grounding_reserve(spec)
    ticket = await call.admit(reserve, ask.max_tokens)
    context: list[Any] = []
    messages = question
    if grounded:
        chunks = await gateway.retrieve(session, call, ask.prompt)
        if not chunks:
            return Prepared(None)
        prompt = grounding.build_prompt(
            ask.prompt,
            chunks,
            budget_tokens=gateway.settings.gateway_context_token_budget,
            encoding=spec.encoding,
        )
        call.sources = [grounding.source(c) for c in prompt.used]
        messages, context = prompt.messages, prompt.used
    body: dict[str, Any] = {"messages": messages}
    if ask.temperature is not None:
        body["temperature"] = ask.temperature
    apply_cap(body, Limits(ask.max_tokens), ticket.max_completion_tokens)
    return Prepared(
        ProviderRequest(
            model=spec,
            body=body,
            prompt_tokens=count_messages(messages, spec.encoding),
            question=ask.prompt,
            context=context,
        )
    )


async def answer(
    gateway: Gateway, call: Call, prepared: Prepared
) -> tuple[str, Outcome, str | None]:
    """Ask the provider (or answer "nothing relevant"); record the call."""
    if prepared.request is None:
        outcome = await call.finish(
            UsageStatus.NO_CONTEXT, usage=TokenUsage(), response_text=NO_ANSWER
        )
        return NO_ANSWER, outcome, "stop"
    spec = prepared.request.model
    completion = await gateway.provider(spec).complete(prepared.request)
    outcome = await call.finish(
        UsageStatus.OK,
        usage=completion.usage,
        response_text=completion.text,
        served=completion.model,
    )
    return completion.text, outcome, completion.finish_reason


async def open_stream(
    gateway: Gateway, call: Call, prepared: Prepared
) -> tuple[CompletionStream, str]:
    """The provider's stream, and the status to record when it ends well."""
    if prepared.request is None:
        assert call.model is not None
        return fixed_stream(NO_ANSWER, call.model), UsageStatus.NO_CONTEXT
    return await gateway.provider(prepared.request.model).stream(prepared.request), UsageStatus.OK


def response_body(call: Call, text: str, outcome: Outcome, finish_reason: str | None) -> bytes:
    """The JSON of ``POST /ai/test`` (``result`` first: what simple clients read)."""
    return orjson.dumps(
        {
            "result": text,
            "request_id": call.request_id,
            "model": outcome.model,
            "usage": outcome.usage_json(),
            "estimated_cost": outcome.cost_text,
            "response_time_ms": outcome.response_time_ms,
            "sources": call.sources,
            "status": outcome.status,
            "finish_reason": finish_reason,
        }
    )


class AskStreamFormat(StreamFormat):
    """``delta`` events with text, then one ``done`` (or ``error``) event."""

    def chunk(self, chunk: StreamChunk) -> bytes | None:
        return sse("delta", {"text": chunk.text}, orjson.dumps) if chunk.text else None

    def done(self, call: Call, stream: CompletionStream, outcome: Outcome) -> bytes:
        return sse(
            "done",
            {
                "request_id": call.request_id,
                "model": outcome.model,
                "status": outcome.status,
                "finish_reason": stream.finish_reason,
                "usage": outcome.usage_json(),
                "estimated_cost": outcome.cost_text,
                "timings": {
                    "response_time_ms": outcome.response_time_ms,
                    "time_to_first_token_ms": outcome.ttft_ms,
                },
                "sources": call.sources,
            },
            orjson.dumps,
        )

    def error(self, call: Call, error: Any) -> bytes:
        return sse(
            "error",
            {"code": error.error_code, "message": error.message, "request_id": call.request_id},
            orjson.dumps,
        )
