"""``/v1/messages``: Anthropic's Messages API, as one more surface of the one flow.

The request is checked and translated into the OpenAI chat body every provider takes
(``providers.translate.anthropic_to_chat``), so a Claude model, any OpenAI-compatible model and the
extractive engine all answer it; the answer (JSON, or Anthropic's SSE events) is written back
from the chat answer and from the call's recorded usage, cache reads and writes included.
``max_tokens`` (required, as Anthropic requires it) is the completion limit the admission caps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from kiban.core.errors import AppError
from kiban.gateway.call import Call, Outcome
from kiban.gateway.exceptions import anthropic_error_type
from kiban.gateway.flow import Answer, Intent, Limits, Surface
from kiban.gateway.providers.base import CompletionStream, StreamChunk
from kiban.gateway.providers.translate.anthropic_answers import EventWriter, event, message_json
from kiban.gateway.providers.translate.anthropic_to_chat import for_openai, read_request
from kiban.gateway.service import Gateway
from kiban.gateway.streaming import StreamFormat
from kiban.gateway.surfaces.body import decoded


@dataclass
class MessagesIntent(Intent):
    anthropic_only: bool = False  # the body carries Anthropic's own hints (``for_openai``)


def parse_messages(raw: bytes) -> MessagesIntent:
    """The request, checked and translated (400 naming the field otherwise)."""
    request = read_request(decoded(raw))
    return MessagesIntent(
        model=request.model,
        body=request.body,
        limits=Limits(request.max_tokens, key="max_tokens"),
        stream=request.stream,
        anthropic_only=request.anthropic_only,
    )


def error_body(error: AppError, request_id: str) -> dict[str, Any]:
    """An error in Anthropic's shape, kiban's ``code`` (and the rest of its fields) kept."""
    fields = error.body()
    fields["type"] = anthropic_error_type(error.status_code)
    if fields.get("param") is None:
        fields.pop("param", None)
    return {"type": "error", "error": fields, "request_id": request_id}


class MessagesStreamFormat(StreamFormat):
    """Anthropic's events, from the upstream's chat chunks or the engine's text."""

    def __init__(self, call: Call) -> None:
        model = call.model.name if call.model else call.model_name
        self.writer = EventWriter(f"msg_{call.request_id}", model)

    def begin(self, stream: CompletionStream) -> None:
        # message_start carries the usage the upstream has said by then (Anthropic's, its
        # message_start's: the prompt and its cache figures), read when the first event goes out.
        self.writer.usage = lambda: stream.usage

    def chunk(self, chunk: StreamChunk) -> bytes | None:
        if chunk.raw is not None:
            if chunk.usage_only:
                return self.writer.start() or None  # the usage goes out at the end, recorded
            return self.writer.chat_chunk(orjson.loads(chunk.raw)) or None
        return self.writer.text(chunk.text) if chunk.text else None

    def done(self, call: Call, stream: CompletionStream, outcome: Outcome) -> bytes:
        return self.writer.finish(stream.finish_reason, outcome.usage)

    def error(self, call: Call, error: AppError) -> bytes:
        return self.writer.start() + event("error", error_body(error, call.request_id))


class MessagesSurface(Surface):
    """Anthropic's Messages API, streamed or not (the ``anthropic`` SDKs, Claude Code)."""

    endpoint = "messages"

    def parse(self, raw: bytes) -> Intent:
        return parse_messages(raw)

    async def respond(self, gateway: Gateway, call: Call, intent: Intent) -> Answer | None:
        """Not an answer of its own: only Anthropic's hints taken off for any other upstream."""
        if isinstance(intent, MessagesIntent) and intent.anthropic_only:
            call.model_name = intent.model or gateway.catalog.default  # recorded if unknown
            if gateway.catalog.resolve(intent.model).provider != "anthropic":
                for_openai(intent.body)
        return None

    def body(self, call: Call, answer: Answer) -> bytes:
        return orjson.dumps(
            message_json(
                message_id=f"msg_{call.request_id}",
                model=answer.outcome.model,
                text=answer.text,
                finish_reason=answer.finish_reason,
                usage=answer.outcome.usage,
                raw=answer.raw,
            )
        )

    def stream_format(self, call: Call, intent: Intent) -> StreamFormat:
        return MessagesStreamFormat(call)


MESSAGES = MessagesSurface()
