"""``/v1/chat/completions``: OpenAI's chat-completions wire format, read by hand, written as needed.

The request body is validated field by field (no body model: it would cost on every request and
reject fields we should pass through). Every field kiban does not interpret travels upstream
unchanged. Upstream responses already in OpenAI's shape are passed through as bytes; only the
extractive engine's answers and the "nothing relevant" answer are written here.

Extension: ``"kiban": {"grounded": true, "top_k": 5}`` grounds a ``/v1`` request in the caller's
documents (a system message with the retrieved context is put before the conversation; the
response then carries ``kiban.sources``). Without it, messages pass through untouched.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from kiban.core.errors import AppError
from kiban.gateway.call import Call, Outcome
from kiban.gateway.exceptions import InvalidRequest, openai_error_type
from kiban.gateway.flow import Answer, Intent, Limits, Surface
from kiban.gateway.providers.base import CompletionStream, StreamChunk
from kiban.gateway.streaming import StreamFormat
from kiban.gateway.surfaces.body import json_object, optional_model

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
DONE = b"data: [DONE]\n\n"


def _int_field(body: dict[str, Any], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequest(f"'{name}' must be an integer of at least {minimum}.", param=name)
    return value


def parse_chat(raw: bytes) -> Intent:
    """The request, checked for what kiban relies on (400 naming the field otherwise)."""
    body = json_object(raw)
    model = optional_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidRequest(
                f"messages[{index}] must be an object with a role ({', '.join(sorted(ROLES))}).",
                param=f"messages[{index}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"messages[{index}].content must be a string or an array of parts.",
                param=f"messages[{index}].content",
            )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        raise InvalidRequest("'temperature' must be a number between 0 and 2.", param="temperature")
    limits = Limits(_int_field(body, "max_tokens", minimum=1))
    requested = _int_field(body, "max_completion_tokens", minimum=1)
    if requested is not None or limits.requested is None:
        limits = Limits(requested if requested is not None else limits.requested)
    else:
        limits = Limits(limits.requested, key="max_tokens")
    extension = body.pop("kiban", None)
    if extension is not None and not isinstance(extension, dict):
        raise InvalidRequest("'kiban' must be an object, e.g. {\"grounded\": true}.", param="kiban")
    extension = extension or {}
    grounded = extension.get("grounded", False)
    if not isinstance(grounded, bool):
        raise InvalidRequest("'kiban.grounded' must be a boolean.", param="kiban.grounded")
    top_k = _int_field(extension, "top_k", minimum=1)
    include_usage = True
    if options is not None and isinstance(options.get("include_usage"), bool):
        include_usage = options["include_usage"]
    return Intent(
        model=model,
        body=body,
        limits=limits,
        stream=stream,
        grounded=grounded,
        top_k=top_k,
        include_usage=include_usage,
    )


def _extension(call: Call) -> dict[str, Any]:
    return {"request_id": call.request_id, "sources": call.sources}


def completion_body(call: Call, text: str, outcome: Outcome, finish_reason: str | None) -> bytes:
    """A ``chat.completion`` written by kiban (extractive engine, nothing relevant)."""
    return orjson.dumps(
        {
            "id": f"chatcmpl-{call.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": outcome.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason or "stop",
                }
            ],
            "usage": outcome.usage_json(),
            "system_fingerprint": None,
            "kiban": _extension(call),
        }
    )


def with_extension(raw: bytes, call: Call) -> bytes:
    """An upstream completion with kiban's sources added (grounded requests only)."""
    data = orjson.loads(raw)
    data["kiban"] = _extension(call)
    return orjson.dumps(data)


def error_event(call: Call, error: AppError) -> bytes:
    """A mid-stream failure as OpenAI streams it (the SDK raises ``APIError`` on it)."""
    return (
        b"data: "
        + orjson.dumps(
            {
                "error": {
                    "message": error.message,
                    "type": openai_error_type(error.status_code),
                    "param": None,
                    "code": error.error_code,
                    "request_id": call.request_id,
                }
            }
        )
        + b"\n\n"
    )


class ChatStreamFormat(StreamFormat):
    """``chat.completion.chunk`` events: passed through from the upstream, or written here."""

    def __init__(self, call: Call, include_usage: bool) -> None:
        self.call = call
        self.include_usage = include_usage
        self.created = int(time.time())
        self.id = f"chatcmpl-{call.request_id}"
        self.wrote_role = False
        self.passed_through = False  # the upstream's own chunks were forwarded

    def _chunk(
        self, model: str, delta: dict[str, Any] | None, finish: str | None, **extra: Any
    ) -> bytes:
        payload = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            if delta is not None
            else [],
            **extra,
        }
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def chunk(self, chunk: StreamChunk) -> bytes | None:
        if chunk.raw is not None:
            self.passed_through = True
            if chunk.usage_only and not self.include_usage:
                return None
            return b"data: " + chunk.raw + b"\n\n"
        if not chunk.text:
            return None
        delta: dict[str, Any] = {"content": chunk.text}
        if not self.wrote_role:
            delta["role"] = "assistant"
            self.wrote_role = True
        model = self.call.model.name if self.call.model else ""
        return self._chunk(model, delta, None)

    def done(self, call: Call, stream: CompletionStream, outcome: Outcome) -> bytes:
        tail = b""
        passthrough = self.passed_through
        if not passthrough:
            tail += self._chunk(outcome.model, {}, stream.finish_reason or "stop")
            if self.include_usage:
                tail += self._chunk(outcome.model, None, None, usage=outcome.usage_json())
        if call.sources or not passthrough:
            tail += self._chunk(outcome.model, None, None, kiban=_extension(call))
        return tail + DONE

    def error(self, call: Call, error: Any) -> bytes:
        return error_event(call, error)


class ChatSurface(Surface):
    """OpenAI's chat completions, streamed or not (the ``openai`` SDKs' ``chat.completions``)."""

    endpoint = "chat_completions"

    def parse(self, raw: bytes) -> Intent:
        return parse_chat(raw)

    def body(self, call: Call, answer: Answer) -> bytes:
        if answer.raw is None:
            return completion_body(call, answer.text, answer.outcome, answer.finish_reason)
        if call.sources:
            return with_extension(answer.raw, call)
        return answer.raw  # the upstream's bytes, untouched

    def stream_format(self, call: Call, intent: Intent) -> StreamFormat:
        return ChatStreamFormat(call, intent.include_usage)


CHAT = ChatSurface()
