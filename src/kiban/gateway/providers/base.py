"""The one small interface every provider implements: ``complete`` and ``stream``.

Both report usage and the finish reason. ``raw`` fields carry the upstream's own OpenAI-shaped
bytes when there are some, so the OpenAI-compatible route can pass them through unparsed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kiban.gateway.catalog import ModelSpec
from kiban.knowledge import RetrievedChunk


@dataclass
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, read from a cache (billed at the cache-read price)
    cache_write_tokens: int = 0  # of the prompt, written to a cache (Anthropic's cache creation)
    reported: bool = False  # True when the upstream said so (its numbers win over local counts)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, usage: Any) -> TokenUsage | None:
        """Usage from an OpenAI ``usage`` object (``None`` when absent or malformed)."""
        if not isinstance(usage, dict):
            return None
        details = usage.get("prompt_tokens_details") or {}
        try:
            return cls(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                cached_tokens=int(details.get("cached_tokens") or 0)
                if isinstance(details, dict)
                else 0,
                reported=True,
            )
        except (TypeError, ValueError):
            return None

    @classmethod
    def from_anthropic(cls, usage: Any) -> TokenUsage | None:
        """Usage from an Anthropic ``usage`` object (``None`` when absent or malformed).

        Anthropic's ``input_tokens`` leaves out the tokens read from and written to its cache;
        kiban's ``prompt_tokens`` is every prompt token (as OpenAI's is), those included.
        """
        if not isinstance(usage, dict):
            return None
        try:
            read = int(usage.get("cache_read_input_tokens") or 0)
            written = int(usage.get("cache_creation_input_tokens") or 0)
            return cls(
                prompt_tokens=int(usage.get("input_tokens") or 0) + read + written,
                completion_tokens=int(usage.get("output_tokens") or 0),
                cached_tokens=read,
                cache_write_tokens=written,
                reported=True,
            )
        except (TypeError, ValueError):
            return None

    def anthropic_json(self) -> dict[str, int]:
        """This usage in Anthropic's fields (``input_tokens`` without the cached parts)."""
        return {
            "input_tokens": max(
                self.prompt_tokens - self.cached_tokens - self.cache_write_tokens, 0
            ),
            "output_tokens": self.completion_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens,
            "cache_read_input_tokens": self.cached_tokens,
        }


@dataclass
class Route:
    """Where a request went upstream: filled in by the router as it tries, read by the ledger."""

    deployment: str | None = None  # the one that served it (or the last one tried)
    kind: str | None = None  # that deployment's kind ("openai" ...)
    attempts: int = 0  # upstream attempts, across retries, failovers and fallback models
    model_id: str | None = None  # the id that deployment was asked for (its model_ids)


@dataclass
class ProviderRequest:
    """What to ask: an OpenAI chat request body, and the retrieved context (grounded requests)."""

    model: ModelSpec
    body: dict[str, Any]  # messages, max_tokens, temperature, and any field passed through
    prompt_tokens: int  # counted locally (used when the upstream reports nothing)
    question: str = ""
    context: Sequence[RetrievedChunk] = ()
    route: Route = field(default_factory=Route)


@dataclass
class Completion:
    text: str
    usage: TokenUsage
    finish_reason: str | None
    model: ModelSpec  # the model that answered (a fallback, perhaps)
    raw: bytes | None = None  # the upstream's OpenAI-shaped response body


@dataclass(slots=True)
class StreamChunk:
    text: str  # the delta text ("" for role-only, finish or usage chunks)
    raw: bytes | None = None  # the upstream's SSE ``data:`` payload, for pass-through
    usage_only: bool = False  # the final chunk that carries only the usage


@dataclass
class CompletionStream:
    """An opened stream, to iterate; ``usage`` and ``finish_reason`` fill in as it goes."""

    model: ModelSpec
    chunks: AsyncIterator[StreamChunk]
    usage: TokenUsage | None = None
    finish_reason: str | None = None
    text_parts: list[str] = field(default_factory=list)
    # Frees the upstream connection even when ``chunks`` was never iterated (its cleanup, in a
    # generator's ``finally``, then never runs).
    release: Callable[[], Awaitable[None]] | None = None

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self.chunks

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    async def aclose(self) -> None:
        """Stop the stream and release the upstream connection."""
        close = getattr(self.chunks, "aclose", None)
        if close is not None:
            await close()
        if self.release is not None:
            await self.release()


class Provider(Protocol):
    name: str

    async def complete(self, request: ProviderRequest) -> Completion: ...

    async def stream(self, request: ProviderRequest) -> CompletionStream: ...

    async def aclose(self) -> None: ...
