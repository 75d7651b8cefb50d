"""An OpenAI chat body sent as an Anthropic Messages request; Anthropic's answers read back as
chat completions and chunks (the ``anthropic`` provider's two halves of the wire).

The chat shapes produced are what kiban's chat surface passes through to the ``openai`` SDKs:
a ``chat.completion`` body, and ``chat.completion.chunk`` payloads ending with a usage chunk.
The usage counts every prompt token (Anthropic's ``input_tokens`` plus its cache reads and
writes), with the cache reads as ``prompt_tokens_details.cached_tokens`` and the writes as
``prompt_tokens_details.cache_write_tokens``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from kiban.gateway.exceptions import InvalidRequest, Untranslatable
from kiban.gateway.providers.base import TokenUsage
from kiban.gateway.providers.translate.anthropic_to_chat import only

# Chat fields that cross (the rest are refused by name, below, or as unknown).
_CROSSING = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
    }
)
# Fields whose neutral value means nothing to translate; any other value is refused.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "store": (False,),
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
}
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


# A chat message's keys that cross (or are ours: is_error, cache_control); any other with a value
# is refused (``name``, ``audio`` …); what the openai SDK sends back empty (refusal: null) passes.
_MESSAGE_KEYS = frozenset(
    {"role", "content", "tool_calls", "tool_call_id", "function_call", "is_error", "cache_control"}
)
_PART_KEYS = frozenset({"type", "text", "cache_control"})
_FUNCTION_KEYS = frozenset({"name", "description", "parameters"})


def finish_reason(stop_reason: str | None) -> str | None:
    return None if stop_reason is None else FINISH_REASONS.get(stop_reason, "stop")


def anthropic_request(
    body: dict[str, Any], *, model: str, default_max_tokens: int, stream: bool
) -> dict[str, Any]:
    """The Anthropic Messages request for a chat body (``Untranslatable`` naming what cannot
    cross)."""
    for name, value in body.items():
        if name in _CROSSING:
            continue
        if name in _NEUTRAL and value in _NEUTRAL[name]:
            continue
        raise Untranslatable(
            f"'{name}' cannot be sent to an Anthropic model (kiban translates the chat fields "
            "Anthropic has an equivalent for).",
            param=name,
        )
    system, messages = _messages(body.get("messages") or [])
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": body.get("max_completion_tokens")
        or body.get("max_tokens")
        or default_max_tokens,
        "messages": messages,
    }
    if system:
        out["system"] = system
    temperature = body.get("temperature")
    if temperature is not None:
        if temperature > 1:
            raise Untranslatable(
                "An Anthropic model takes a temperature between 0 and 1.", param="temperature"
            )
        out["temperature"] = temperature
    for name in ("top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(tool, index) for index, tool in enumerate(tools)]
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and tools:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    if stream:
        out["stream"] = True
    return out


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """A chat content (a string or parts) as Anthropic text blocks (empty texts left out: Anthropic
    refuses them)."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or an array of parts.", param=where)
    blocks = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise Untranslatable(
                f"{where}[{index}]: parts of type {kind!r} cannot be sent to an Anthropic model "
                "through kiban (text parts can).",
                param=f"{where}[{index}].type",
            )
        only(part, _PART_KEYS, f"{where}[{index}]")
        if part.get("text"):
            block: dict[str, Any] = {"type": "text", "text": str(part["text"])}
            if part.get("cache_control") is not None:
                block["cache_control"] = part["cache_control"]
            blocks.append(block)
    return blocks


def _messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        # Consecutive turns of one role are one Anthropic message (tool results, then text).
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        elif blocks:
            out.append({"role": role, "content": blocks})

    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.get("role")
        only(message, _MESSAGE_KEYS, where)
        if role in ("system", "developer"):
            system.extend(_text_blocks(message.get("content"), f"{where}.content"))
        elif role == "user":
            add("user", _text_blocks(message.get("content"), f"{where}.content"))
        elif role == "assistant":
            if message.get("function_call"):
                raise Untranslatable(
                    "Legacy function_call cannot be sent to an Anthropic model (tool_calls can).",
                    param=f"{where}.function_call",
                )
            blocks = _text_blocks(message.get("content"), f"{where}.content")
            for number, call in enumerate(message.get("tool_calls") or ()):
                blocks.append(_tool_use(call, f"{where}.tool_calls[{number}]"))
            add("assistant", blocks)
        elif role == "tool":
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id") or ""),
                "content": "".join(
                    b["text"] for b in _text_blocks(message.get("content"), f"{where}.content")
                ),
            }
            if message.get("is_error"):
                result["is_error"] = True
            if message.get("cache_control") is not None:
                result["cache_control"] = message["cache_control"]
            add("user", [result])
        else:
            raise Untranslatable(
                f"Messages of role {role!r} cannot be sent to an Anthropic model.",
                param=f"{where}.role",
            )
    return system, out


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or call.get("type", "function") != "function":
        raise Untranslatable(f"{where}: only function tool calls can cross.", param=where)
    arguments = function.get("arguments") or "{}"
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            f"{where}.function.arguments is not valid JSON.", param=f"{where}.function.arguments"
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"{where}.function.arguments must be a JSON object.",
            param=f"{where}.function.arguments",
        )
    block = {
        "type": "tool_use",
        "id": str(call.get("id") or ""),
        "name": str(function.get("name") or ""),
        "input": value,
    }
    if call.get("cache_control") is not None:
        block["cache_control"] = call["cache_control"]
    return block


def _tool(tool: Any, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or tool.get("type") != "function":
        raise Untranslatable(f"{where}: only function tools can cross.", param=f"{where}.type")
    # strict: false is the default: nothing to lose; strict: true has no equivalent.
    if function.get("strict") is False:
        function = {k: v for k, v in function.items() if k != "strict"}
    only(function, _FUNCTION_KEYS, f"{where}.function")
    out: dict[str, Any] = {
        "name": str(function.get("name") or ""),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    if tool.get("cache_control") is not None:
        out["cache_control"] = tool["cache_control"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and function.get("name"):
        return {"type": "tool", "name": str(function["name"])}
    raise Untranslatable(
        "This tool_choice cannot be sent to an Anthropic model.", param="tool_choice"
    )


# --- answers -------------------------------------------------------------------------------


def openai_usage(usage: TokenUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
    }


def chat_completion(
    message: dict[str, Any],
) -> tuple[dict[str, Any], str, str | None, TokenUsage | None]:
    """An Anthropic ``message`` as a ``chat.completion`` body, with its text, finish reason and
    usage (``KeyError``/``TypeError`` when it is not a message)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message["content"]:
        if block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    text = "".join(texts)
    finish = finish_reason(message.get("stop_reason")) or "stop"
    usage = TokenUsage.from_anthropic(message.get("usage"))
    reply: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    body: dict[str, Any] = {
        "id": str(message.get("id") or ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(message.get("model") or ""),
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}],
        "system_fingerprint": None,
    }
    if usage is not None:
        body["usage"] = openai_usage(usage)
    return body, text, finish, usage


class ChunkReader:
    """Anthropic's stream events in, ``chat.completion.chunk`` payloads out: one per stream.

    ``read`` takes one event's data and returns ``(text, payload)`` (payload ``None``: nothing to
    send). ``usage`` and ``finish_reason`` fill in as the events come; ``done`` once
    ``message_stop`` arrived, whose payload is the final usage chunk.
    """

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = int(time.time())
        self.usage: TokenUsage | None = None
        self.finish_reason: str | None = None
        self.done = False
        self.calls = -1  # the index of the latest tool call

    def _chunk(
        self, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any
    ) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": []
                if delta is None
                else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                **extra,
            }
        )

    def _usage(self, usage: Any) -> None:
        # message_delta's counts are cumulative; the ones it leaves out keep message_start's.
        if not isinstance(usage, dict):
            return
        merged = dict(self.usage.anthropic_json()) if self.usage else {}
        merged.update({k: v for k, v in usage.items() if v is not None})
        self.usage = TokenUsage.from_anthropic(merged) or self.usage

    def read(self, data: dict[str, Any]) -> tuple[str, bytes | None]:
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return delta["text"], self._chunk({"content": delta["text"]})
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                call = {"index": self.calls, "function": {"arguments": delta["partial_json"]}}
                return "", self._chunk({"tool_calls": [call]})
            return "", None
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                self.calls += 1
                call = {
                    "index": self.calls,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return "", self._chunk({"tool_calls": [call]})
            if block.get("type") == "text" and block.get("text"):
                return block["text"], self._chunk({"content": block["text"]})
            return "", None
        if kind == "message_start":
            message = data.get("message") or {}
            self.id = str(message.get("id") or "")
            self.model = str(message.get("model") or "")
            self._usage(message.get("usage"))
            return "", self._chunk({"role": "assistant", "content": ""})
        if kind == "message_delta":
            self._usage(data.get("usage"))
            reason = finish_reason((data.get("delta") or {}).get("stop_reason"))
            if reason is None:
                return "", None
            self.finish_reason = reason
            return "", self._chunk({}, reason)
        if kind == "message_stop":
            self.done = True
            usage = self.usage or TokenUsage()
            return "", self._chunk(None, usage=openai_usage(usage))
        return "", None  # ping, content_block_stop, and what a newer API adds
