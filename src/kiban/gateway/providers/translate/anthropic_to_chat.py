"""Anthropic's Messages request read into an OpenAI chat body (the answers: ``anthropic_answers``).

This is how ``POST /v1/messages`` reaches whatever serves a model: the flow and every provider
take an OpenAI chat body and answer in OpenAI's shapes (or in plain text: the extractive engine).

``cache_control`` (a caching hint, not content) rides on the chat body's text parts, tool
results and tools, so that the ``anthropic`` provider sends it back; a tool result's ``is_error``
rides on its ``tool`` message. ``for_openai`` takes both off (the error folded into the result's
text) before an OpenAI-compatible upstream sees the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from kiban.gateway.exceptions import InvalidRequest, Untranslatable

ACCEPTED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "service_tier",
    }
)
TOOL_ERROR_PREFIX = "Error: "


@dataclass
class MessagesRequest:
    """A ``/v1/messages`` request, checked and translated."""

    model: str | None
    body: dict[str, Any]  # the OpenAI chat body
    max_tokens: int
    stream: bool
    anthropic_only: bool  # the body carries cache_control or is_error (``for_openai`` strips)


def _int(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequest(f"'{name}' must be an integer of at least {minimum}.", param=name)
    return value


def _number(body: dict[str, Any], chat: dict[str, Any], name: str, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number between 0 and {high:g}.", param=name)
    chat[name] = value


def read_request(body: Any) -> MessagesRequest:
    """Check an Anthropic Messages body and translate it (400 naming the field otherwise)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    unknown = sorted(set(body) - ACCEPTED)
    if unknown:
        raise Untranslatable(
            f"kiban does not support the field '{unknown[0]}' on /v1/messages.", param=unknown[0]
        )
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    if "max_tokens" not in body:
        raise InvalidRequest("'max_tokens' is required.", param="max_tokens")
    max_tokens = _int(body["max_tokens"], "max_tokens", minimum=1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    extras = _Extras()
    messages = _system(body.get("system"), extras)
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for index, message in enumerate(raw_messages):
        messages.extend(_message(message, index, extras))
    chat: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens}
    if stream:
        chat["stream"] = True
    _number(body, chat, "temperature", 1)
    _number(body, chat, "top_p", 1)
    if body.get("top_k") is not None:
        chat["top_k"] = _int(body["top_k"], "top_k", minimum=0)
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest(
                "'stop_sequences' must be an array of strings.", param="stop_sequences"
            )
        if stops:
            chat["stop"] = stops
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"], extras)
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
    _metadata(body.get("metadata"), chat)
    thinking = body.get("thinking")
    if thinking is not None and not (
        isinstance(thinking, dict) and thinking.get("type") == "disabled"
    ):
        raise Untranslatable("Extended thinking is not supported through kiban.", param="thinking")
    tier = body.get("service_tier")
    if tier is not None and tier != "auto":
        raise Untranslatable("Only service_tier 'auto' is supported.", param="service_tier")
    return MessagesRequest(model, chat, max_tokens, stream, extras.found)


class _Extras:
    found = False


_TEXT_KEYS = frozenset({"type", "text", "cache_control", "citations"})
_TOOL_USE_KEYS = frozenset({"type", "id", "name", "input", "cache_control"})
_TOOL_RESULT_KEYS = frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"})
_TOOL_KEYS = frozenset({"type", "name", "description", "input_schema", "cache_control"})


def only(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    """Refuse a key the translation would lose (an empty value loses nothing)."""
    for key, value in obj.items():
        if key not in allowed and not (value is None or value == [] or value == {}):
            raise Untranslatable(
                f"{where}.{key} is not supported through kiban.", param=f"{where}.{key}"
            )


def _cached(target: dict[str, Any], block: dict[str, Any], extras: _Extras) -> dict[str, Any]:
    if block.get("cache_control") is not None:
        target["cache_control"] = block["cache_control"]
        extras.found = True
    return target


def _text_block(block: dict[str, Any], where: str, extras: _Extras) -> dict[str, Any]:
    only(block, _TEXT_KEYS, where)
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"{where}.text must be a string.", param=f"{where}.text")
    if block.get("citations"):
        raise Untranslatable(
            "Citations are not supported through kiban.", param=f"{where}.citations"
        )
    return _cached({"type": "text", "text": text}, block, extras)


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One plain text as a string (what every upstream takes); parts only when they carry more."""
    if len(parts) == 1 and "cache_control" not in parts[0]:
        return str(parts[0]["text"])
    return parts


def _system(system: Any, extras: _Extras) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise InvalidRequest(
            "'system' must be a string or an array of text blocks.", param="system"
        )
    parts = []
    for index, block in enumerate(system):
        where = f"system[{index}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Untranslatable(f"{where} must be a text block.", param=f"{where}.type")
        parts.append(_text_block(block, where, extras))
    return [{"role": "system", "content": _content(parts)}] if parts else []


def _message(message: Any, index: int, extras: _Extras) -> list[dict[str, Any]]:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise InvalidRequest(
            f"{where} must be an object with a role ('user' or 'assistant').", param=f"{where}.role"
        )
    only(message, frozenset({"role", "content"}), where)
    role = message["role"]
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest(
            f"{where}.content must be a string or an array of blocks.", param=f"{where}.content"
        )
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for number, block in enumerate(content):
        at = f"{where}.content[{number}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_block(block, at, extras))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_cached(_tool_call(block, at), block, extras))
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, at, extras))
        else:
            raise Untranslatable(
                f"{at}: content blocks of type {kind!r} are not supported through kiban "
                "(text, tool_use and tool_result are).",
                param=f"{at}.type",
            )
    if role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": _content(parts) if parts else None}
        if calls:
            out["tool_calls"] = calls
        return [out]
    # A tool message must follow the assistant's call directly: the results first, then the text.
    return results + ([{"role": "user", "content": _content(parts)}] if parts else [])


def _tool_call(block: dict[str, Any], at: str) -> dict[str, Any]:
    only(block, _TOOL_USE_KEYS, at)
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise InvalidRequest(f"{at}: a tool_use block needs an id and a name.", param=at)
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"{at}.input must be an object.", param=f"{at}.input")
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": orjson.dumps(arguments).decode()},
    }


def _tool_result(block: dict[str, Any], at: str, extras: _Extras) -> dict[str, Any]:
    only(block, _TOOL_RESULT_KEYS, at)
    if not isinstance(block.get("tool_use_id"), str):
        raise InvalidRequest(f"{at}.tool_use_id must be a string.", param=f"{at}.tool_use_id")
    content = block.get("content", "")
    cached = block.get("cache_control")
    if isinstance(content, list):
        texts = []
        for number, part in enumerate(content):
            inner = f"{at}.content[{number}]"
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else None
                raise Untranslatable(
                    f"{inner}: tool results of type {kind!r} are not supported (text is).",
                    param=f"{inner}.type",
                )
            text = _text_block(part, inner, extras)
            cached = text.get("cache_control", cached)  # a breakpoint inside: the result's
            texts.append(str(text["text"]))
        content = "\n".join(texts)
    elif not isinstance(content, str):
        raise InvalidRequest(
            f"{at}.content must be a string or text blocks.", param=f"{at}.content"
        )
    out: dict[str, Any] = {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}
    if block.get("is_error"):
        out["is_error"] = True
        extras.found = True
    return _cached(out, {"cache_control": cached}, extras)


def _tools(tools: Any, extras: _Extras) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    out = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"{where} must be an object.", param=where)
        if tool.get("type") in (None, "custom"):
            only(tool, _TOOL_KEYS, where)
        else:
            raise Untranslatable(
                f"{where}: Anthropic's server tools ({tool['type']!r}) are not supported through "
                "kiban (custom tools are).",
                param=f"{where}.type",
            )
        if not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"{where}.name must be a string.", param=f"{where}.name")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(
                f"{where}.input_schema must be an object.", param=f"{where}.input_schema"
            )
        function: dict[str, Any] = {"name": tool["name"], "parameters": schema}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        out.append(_cached({"type": "function", "function": function}, tool, extras))
    return out


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise InvalidRequest(
            "'tool_choice' must be {type: auto | any | none} or {type: tool, name}.",
            param="tool_choice",
        )
    if choice.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def _metadata(metadata: Any, chat: dict[str, Any]) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be an object.", param="metadata")
    for key, value in metadata.items():
        if key != "user_id":
            raise Untranslatable(
                f"metadata.{key} is not supported (user_id is).", param=f"metadata.{key}"
            )
        if value is not None:
            chat["user"] = str(value)


def for_openai(body: dict[str, Any]) -> None:
    """Take Anthropic's own hints off a translated body, in place, for an OpenAI upstream: its
    ``cache_control`` (OpenAI caches by itself), and a tool error folded into the result's text."""
    for tool in body.get("tools") or ():
        tool.pop("cache_control", None)
    for message in body["messages"]:
        message.pop("cache_control", None)
        if message.pop("is_error", False):
            message["content"] = TOOL_ERROR_PREFIX + str(message.get("content") or "")
        for call in message.get("tool_calls") or ():
            call.pop("cache_control", None)
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                part.pop("cache_control", None)
