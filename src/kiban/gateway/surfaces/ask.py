"""``/ai/test`` and ``/ai/stream``: a question, grounded in the caller's documents, in kiban's JSON.

The request is ``AskRequest``; the answer is one JSON object (``AskResponse``) or server-sent
events (``delta`` events, then one ``done`` or ``error``).
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from kiban.core.errors import Unprocessable
from kiban.gateway.call import Call, Outcome
from kiban.gateway.flow import Answer, Intent, Limits, Surface
from kiban.gateway.providers.base import CompletionStream, StreamChunk
from kiban.gateway.schemas import AskRequest
from kiban.gateway.streaming import StreamFormat, sse


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


class AskSurface(Surface):
    """A question in kiban's JSON: answered at once (``/ai/test``) or streamed (``/ai/stream``)."""

    def __init__(self, endpoint: str, *, streamed: bool) -> None:
        self.endpoint = endpoint
        self.streamed = streamed

    def parse(self, raw: bytes) -> Intent:
        ask = parse_ask(raw)
        body: dict[str, Any] = {"messages": [{"role": "user", "content": ask.prompt}]}
        if ask.temperature is not None:
            body["temperature"] = ask.temperature
        return Intent(
            model=ask.model,
            body=body,
            limits=Limits(ask.max_tokens),
            prompt=ask.prompt,
            stream=self.streamed,
            grounded=ask.grounded,
        )

    def body(self, call: Call, answer: Answer) -> bytes:
        """The JSON of ``POST /ai/test`` (``result`` first: what simple clients read)."""
        outcome = answer.outcome
        return orjson.dumps(
            {
                "result": answer.text,
                "request_id": call.request_id,
                "model": outcome.model,
                "usage": outcome.usage_json(),
                "estimated_cost": outcome.cost_text,
                "response_time_ms": outcome.response_time_ms,
                "sources": call.sources,
                "status": outcome.status,
                "finish_reason": answer.finish_reason,
            }
        )

    def stream_format(self, call: Call, intent: Intent) -> StreamFormat:
        return AskStreamFormat()


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


ONCE = AskSurface("ai_test", streamed=False)
STREAMED = AskSurface("ai_stream", streamed=True)
