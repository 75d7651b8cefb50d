"""Chat answers written back in Anthropic's shapes: a whole ``message``, or the stream's events.

The flow's answers are chat-shaped (an OpenAI ``chat.completion`` body or chunks from a provider,
or plain text from the extractive engine); ``/v1/messages`` writes them as Anthropic does, with
the usage the call recorded (Anthropic's ``input_tokens`` leaves the cached parts out).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from kiban.gateway.providers.base import TokenUsage

# OpenAI's finish reasons as Anthropic's stop reasons.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish_reason: str | None) -> str:
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def tool_input(arguments: Any) -> Any:
    """A tool call's JSON arguments as Anthropic's ``input`` object (a model's malformed
    arguments are kept, under ``_raw_arguments``, rather than lost)."""
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"_raw_arguments": arguments}


def message_json(
    *,
    message_id: str,
    model: str,
    text: str,
    finish_reason: str | None,
    usage: TokenUsage,
    raw: bytes | None,
) -> dict[str, Any]:
    """An Anthropic ``message`` from a chat answer (the upstream's chat body when there is one)."""
    calls: list[Any] = []
    if raw is not None:
        try:
            choice = orjson.loads(raw)["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content") or ""
            calls = message.get("tool_calls") or []
            finish_reason = choice.get("finish_reason") or finish_reason
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            pass  # the provider read it already: its text and finish reason stand
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for call in calls:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "",
                "name": function.get("name") or "",
                "input": tool_input(function.get("arguments")),
            }
        )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if calls else stop_reason(finish_reason),
        "stop_sequence": None,
        "usage": usage.anthropic_json(),
    }


def event(name: str, payload: dict[str, Any]) -> bytes:
    """One Anthropic server-sent event (its ``type`` is its name)."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class EventWriter:
    """Chat stream chunks in, Anthropic's stream events out: one writer per stream.

    ``message_start`` (with the usage known by then, else zeros; and a ``ping``) goes out before
    the first block; each text run or tool call
    is a content block (``content_block_start``, deltas, ``content_block_stop``); the end is one
    ``message_delta`` with the stop reason and the whole usage, then ``message_stop``.
    """

    def __init__(self, message_id: str, model: str) -> None:
        self.message_id = message_id
        self.model = model
        self.started = False
        self.index = -1  # the open block's index (-1: none yet)
        self.open: str | None = None  # "text" | "tool_use"
        self.tools: dict[int, int] = {}  # a chat tool call's index -> its block's index
        self.finish_reason: str | None = None
        self.usage: Callable[[], TokenUsage | None] = lambda: None  # what is known at the start

    def start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        known = self.usage()
        usage = known.anthropic_json() if known is not None else {}
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, **usage, "output_tokens": 0},
        }
        return event("message_start", {"type": "message_start", "message": message}) + event(
            "ping", {"type": "ping"}
        )

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _open(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.open = block["type"]
        return out + event(
            "content_block_start",
            {"type": "content_block_start", "index": self.index, "content_block": block},
        )

    def text(self, text: str) -> bytes:
        out = self.start()
        if self.open != "text":
            out += self._open({"type": "text", "text": ""})
        return out + event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": self.index,
                "delta": {"type": "text_delta", "text": text},
            },
        )

    def tool_call(self, call: dict[str, Any]) -> bytes:
        out = self.start()
        position = call.get("index", 0)
        function = call.get("function") or {}
        if position not in self.tools:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or "",
                "name": function.get("name") or "",
                "input": {},
            }
            out += self._open(block)
            self.tools[position] = self.index
        elif self.tools[position] != self.index:
            return out  # a late fragment of an earlier call: Anthropic's blocks do not interleave
        arguments = function.get("arguments")
        if arguments:
            out += event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": self.index,
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                },
            )
        return out

    def chat_chunk(self, chunk: dict[str, Any]) -> bytes:
        """One parsed ``chat.completion.chunk``'s events (b"" when it adds none)."""
        out = self.start()
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self.text(delta["content"])
            for call in delta.get("tool_calls") or ():
                out += self.tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def finish(self, finish_reason: str | None, usage: TokenUsage) -> bytes:
        """The stream's end: the last block closed, the stop reason and usage, ``message_stop``."""
        reason = "tool_use" if self.tools else stop_reason(finish_reason or self.finish_reason)
        return (
            self.start()
            + self._close()
            + event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": None},
                    "usage": usage.anthropic_json(),
                },
            )
            + event("message_stop", {"type": "message_stop"})
        )
