"""The Anthropic provider: ``POST {base}/v1/messages``, JSON or SSE, over the shared aiohttp pools.

It takes the same OpenAI chat body as every provider and answers in OpenAI's shapes (a
``chat.completion`` body, ``chat.completion.chunk`` payloads): the translation is
``providers.translate.chat_to_anthropic``. Usage comes from Anthropic's own fields, cache
reads and writes included.

Exactly one attempt per ``complete``/``stream`` call: retries and failover between deployments
belong to the router above the providers. Anthropic's errors become the exceptions the OpenAI
provider raises (``UpstreamError``, ``UpstreamUnavailable`` with the upstream's ``retry-after``,
``UpstreamTimeout``; a request the upstream refuses is the caller's 400).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from kiban.core.metrics import UPSTREAM_ERRORS
from kiban.gateway.catalog import ModelSpec
from kiban.gateway.deployments import Deployment
from kiban.gateway.exceptions import (
    InvalidRequest,
    UpstreamError,
    UpstreamFailure,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from kiban.gateway.providers.base import (
    Completion,
    CompletionStream,
    ProviderRequest,
    StreamChunk,
    TokenUsage,
)
from kiban.gateway.providers.http import UpstreamPools, drain, releaser, retry_after
from kiban.gateway.providers.translate.chat_to_anthropic import (
    ChunkReader,
    anthropic_request,
    chat_completion,
    openai_usage,
)
from kiban.gateway.tokenizer import count_text
from kiban.settings import Settings

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider:
    """Chat requests answered by an Anthropic Messages API (Anthropic, or one that speaks it)."""

    name = "anthropic"

    def __init__(
        self,
        settings: Settings,
        *,
        base_url: str,
        api_key: str | None,
        pools: UpstreamPools,
        deployment: Deployment | None = None,
    ) -> None:
        self.settings = settings
        self.deployment = deployment  # its model_ids name the models as it knows them
        self.base_url = base_url.rstrip("/")
        self._url = f"{self.base_url}/v1/messages"
        self._pools = pools
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if api_key:
            self._headers["x-api-key"] = api_key

    async def aclose(self) -> None:
        """Nothing of its own: the pools belong to whoever made them."""

    def _model_id(self, spec: ModelSpec) -> str:
        if self.deployment is None:
            return spec.upstream_model
        return self.deployment.model_id(spec.upstream_model)

    async def complete(self, request: ProviderRequest) -> Completion:
        """One message, in one attempt."""
        spec = request.model
        body = anthropic_request(
            request.body,
            model=self._model_id(spec),
            default_max_tokens=spec.max_output_tokens,
            stream=False,
        )
        try:
            async with asyncio.timeout(self.settings.upstream_deadline_seconds):
                response = await self._post(body)
                try:
                    raw = await response.read()
                except TimeoutError:
                    raise  # aiohttp's read timeout is a ClientError too: a timeout first
                except aiohttp.ClientError as exc:  # the connection dropped mid-body
                    raise self._unreachable() from exc
                finally:
                    response.release()
        except TimeoutError as exc:
            UPSTREAM_ERRORS.labels(self.name, "timeout").inc()
            raise UpstreamTimeout() from exc
        try:
            chat, text, finish, usage = chat_completion(orjson.loads(raw))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            UPSTREAM_ERRORS.labels(self.name, "malformed").inc()
            raise UpstreamError(
                "The model provider returned a response kiban cannot read."
            ) from exc
        if usage is None:
            usage = TokenUsage(request.prompt_tokens, count_text(text, spec.encoding))
            chat["usage"] = openai_usage(usage)
        return Completion(text, usage, finish, spec, raw=orjson.dumps(chat))

    async def stream(self, request: ProviderRequest) -> CompletionStream:
        """Open a streamed message (one attempt; the read timeout bounds every wait after it)."""
        spec = request.model
        body = anthropic_request(
            request.body,
            model=self._model_id(spec),
            default_max_tokens=spec.max_output_tokens,
            stream=True,
        )
        try:
            async with asyncio.timeout(self.settings.upstream_deadline_seconds):
                response = await self._post(body)
        except TimeoutError as exc:
            UPSTREAM_ERRORS.labels(self.name, "timeout").inc()
            raise UpstreamTimeout() from exc
        stream = CompletionStream(model=spec, chunks=_empty(), release=releaser(response))
        stream.chunks = self._read_stream(stream, response, request)
        return stream

    # --- the wire ------------------------------------------------------------------------------

    def _unreachable(self) -> UpstreamUnavailable:
        UPSTREAM_ERRORS.labels(self.name, "connection").inc()
        return UpstreamUnavailable("Could not reach the model provider.")

    async def _post(self, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """Send the request; a 2xx response with its body unread, or the mapped error."""
        session = self._pools.session(self.base_url)
        try:
            response = await session.post(self._url, data=orjson.dumps(body), headers=self._headers)
        except TimeoutError:
            raise
        except aiohttp.ClientError as exc:  # refused, reset, DNS, TLS, a dropped keep-alive
            raise self._unreachable() from exc
        if response.status < 400:
            return response
        try:
            raw = await response.read()
        except aiohttp.ClientError:
            raw = b""
        finally:
            response.release()
        raise _status_error(response.status, response.headers, raw)

    async def _read_stream(
        self, stream: CompletionStream, response: aiohttp.ClientResponse, request: ProviderRequest
    ) -> AsyncIterator[StreamChunk]:
        reader = ChunkReader()
        try:
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue  # "event:" lines (the data repeats the type), blank separators
                data = orjson.loads(line[5:].strip())
                if data.get("type") == "error":
                    raise _stream_error(data.get("error"))
                text, payload = reader.read(data)
                stream.usage = reader.usage
                stream.finish_reason = reader.finish_reason
                if text:
                    stream.text_parts.append(text)
                if payload is not None:
                    yield StreamChunk(text, payload, usage_only=reader.done)
                if reader.done:
                    break
            if not reader.done:
                raise UpstreamError("The model provider ended the stream before finishing.")
            await drain(response)
        except TimeoutError as exc:
            UPSTREAM_ERRORS.labels(self.name, "timeout").inc()
            raise UpstreamTimeout("The model provider stopped sending mid-stream.") from exc
        except (aiohttp.ClientError, orjson.JSONDecodeError, ValueError, AttributeError) as exc:
            UPSTREAM_ERRORS.labels(self.name, "stream_cut").inc()
            raise UpstreamError("The model provider's stream was cut off.") from exc
        finally:
            response.release()
            if not reader.done or reader.usage is None:
                # Cut short, or no usage said: the prompt as the upstream counted it (its
                # message_start), if it did, and the text that came, counted here.
                said = reader.usage
                prompt = TokenUsage(request.prompt_tokens) if said is None else said
                stream.usage = TokenUsage(
                    prompt.prompt_tokens,
                    count_text(stream.text, stream.model.encoding),
                    prompt.cached_tokens,
                    prompt.cache_write_tokens,
                    reported=said is not None,
                )


async def _empty() -> AsyncIterator[StreamChunk]:
    return
    yield  # pragma: no cover


def _error_message(raw: bytes) -> str | None:
    """The ``error.message`` of an Anthropic error body (``None``: not one)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return str(message) if message else None


def _status_error(
    status: int, headers: Mapping[str, str], raw: bytes
) -> UpstreamFailure | InvalidRequest:
    UPSTREAM_ERRORS.labels("anthropic", f"status_{status}").inc()
    detail = _error_message(raw)
    if status in (400, 413, 422):
        return InvalidRequest(
            f"The model provider rejected the request: {detail or status}",
            code="upstream_rejected_request",
        )
    if status in (429, 503, 529):  # 529: Anthropic's "overloaded"
        return UpstreamUnavailable(retry_after=retry_after(headers), upstream_status=status)
    if status in (408, 504):
        return UpstreamTimeout(upstream_status=status)
    if status in (401, 403):
        return UpstreamError(
            "The model provider refused kiban's credentials (check ANTHROPIC_API_KEY).",
            upstream_status=status,
        )
    if status == 404:
        return UpstreamError(
            "The model provider does not know this model (check the models file).",
            upstream_status=status,
        )
    return UpstreamError(f"The model provider failed (HTTP {status}).", upstream_status=status)


def _stream_error(error: Any) -> UpstreamFailure:
    UPSTREAM_ERRORS.labels("anthropic", "stream_error").inc()
    kind = error.get("type") if isinstance(error, dict) else None
    message = (error.get("message") if isinstance(error, dict) else None) or (
        "The model provider failed mid-stream."
    )
    if kind in ("overloaded_error", "rate_limit_error"):
        return UpstreamUnavailable(str(message))
    return UpstreamError(str(message))
