"""The OpenAI-compatible provider: ``POST /chat/completions`` on any base URL, over aiohttp.

The wire protocol is spoken here, not through the ``openai`` SDK: the SDK's HTTP stack cost more
CPU per request than the rest of the gateway together (decision 0067), and the gateway only needs
its bytes. What the SDK did is kept: a bearer key, JSON bodies, OpenAI's error bodies read for
their message and code, ``Retry-After``/``retry-after-ms`` honoured, per-read timeouts.

Retries are ours: every attempt and every fallback model share one deadline; 429, 408, 409, 5xx,
timeouts and connection errors are retried with exponential backoff and jitter, and a
``Retry-After`` from the upstream is waited for exactly, or not at all when it would pass the
deadline. Responses are taken raw (bytes) and only the usage, text and finish reason are read.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp
import orjson
import structlog

from kiban.core import clock
from kiban.core.metrics import UPSTREAM_ERRORS, UPSTREAM_RETRIES
from kiban.gateway.catalog import Catalog, ModelSpec
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
from kiban.gateway.providers.http import UpstreamPools
from kiban.gateway.tokenizer import count_text
from kiban.settings import Settings

OPENAI_BASE_URL = "https://api.openai.com/v1"
log = structlog.get_logger("kiban.gateway.openai")
T = TypeVar("T")
_DRAIN_SECONDS = 1.0
_RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class _Attempt(Exception):
    """One failed attempt: the error to raise if no retry succeeds, and whether to retry."""

    def __init__(
        self, error: UpstreamFailure | InvalidRequest, *, retry: bool, wait: float | None = None
    ):
        super().__init__(error.message)
        self.error = error
        self.retry = retry
        self.wait = wait  # the upstream's Retry-After, in seconds


class OpenAIProvider:
    """Chat completions through an OpenAI-compatible upstream (OpenAI, Azure, vLLM, Ollama …)."""

    name = "openai"

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        *,
        pools: UpstreamPools | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self._sleep = sleep
        self._pools = pools or UpstreamPools(settings)
        self._owns_pools = pools is None
        base_url = (settings.openai_base_url or OPENAI_BASE_URL).rstrip("/")
        self.base_url = base_url
        self._url = f"{base_url}/chat/completions"
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:  # local servers (Ollama, llama.cpp, vLLM) often need none
            self._headers["Authorization"] = f"Bearer {key}"

    async def aclose(self) -> None:
        if self._owns_pools:
            await self._pools.aclose()

    # --- the interface -------------------------------------------------------------------------

    async def complete(self, request: ProviderRequest) -> Completion:
        """One chat completion; retried and failed over within the deadline."""

        async def attempt(spec: ModelSpec, budget: float) -> Completion:
            body = _upstream_body(request.body, spec, stream=False)
            async with asyncio.timeout(budget):
                response = await self._post(body)
                try:
                    raw = await response.read()
                except TimeoutError:
                    raise
                except aiohttp.ClientError as exc:  # the connection dropped mid-body
                    raise _connection_attempt(self.name) from exc
                finally:
                    response.release()
            return _completion(raw, spec, request)

        return await self._with_retries(request.model, attempt)

    async def stream(self, request: ProviderRequest) -> CompletionStream:
        """Open a streamed completion (retries happen until the upstream starts answering)."""

        async def attempt(
            spec: ModelSpec, budget: float
        ) -> tuple[ModelSpec, aiohttp.ClientResponse]:
            body = _upstream_body(request.body, spec, stream=True)
            async with asyncio.timeout(budget):
                return spec, await self._post(body)

        spec, response = await self._with_retries(request.model, attempt)
        stream = CompletionStream(model=spec, chunks=_empty(), release=_releaser(response))
        stream.chunks = self._read_stream(stream, response, request)
        return stream

    # --- attempts, retries, fallbacks ------------------------------------------------------------

    async def _post(self, body: bytes) -> aiohttp.ClientResponse:
        """Send one attempt; a 2xx response with its body unread, or an ``_Attempt``."""
        session = self._pools.session(self.base_url)
        try:
            response = await session.post(self._url, data=body, headers=self._headers)
        except TimeoutError:
            raise  # aiohttp's connect timeout: retried as a timeout by the caller
        except aiohttp.ClientError as exc:  # refused, reset, DNS, TLS, a dropped keep-alive
            raise _connection_attempt(self.name) from exc
        if response.status < 400:
            return response
        try:
            raw = await response.read()
        except aiohttp.ClientError:
            raw = b""
        finally:
            response.release()
        raise _status_attempt(response.status, response.headers, _error_object(raw))

    async def _with_retries(
        self, spec: ModelSpec, attempt: Callable[[ModelSpec, float], Awaitable[T]]
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.upstream_deadline_seconds
        candidates = [spec] + [self.catalog.models[name] for name in spec.fallbacks]
        last: UpstreamFailure | InvalidRequest | None = None
        for index, candidate in enumerate(candidates):
            if index:
                log.warning("upstream_fallback", model=spec.name, fallback=candidate.name)
                UPSTREAM_RETRIES.labels(self.name, "fallback").inc()
            for retry in range(self.settings.upstream_max_retries + 1):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise last or UpstreamTimeout()
                try:
                    return await attempt(candidate, remaining)
                except TimeoutError:
                    UPSTREAM_ERRORS.labels(self.name, "timeout").inc()
                    failure = _Attempt(UpstreamTimeout(), retry=True)
                except _Attempt as exc:
                    failure = exc
                last = failure.error
                if not failure.retry:
                    raise last from None
                if retry == self.settings.upstream_max_retries:
                    break
                delay = self._backoff(retry, failure.wait)
                if loop.time() + delay >= deadline:
                    raise last from None
                UPSTREAM_RETRIES.labels(self.name, failure.error.code).inc()
                log.info(
                    "upstream_retry",
                    model=candidate.name,
                    attempt=retry + 1,
                    wait_s=round(delay, 3),
                    reason=failure.error.code,
                )
                await self._sleep(delay)
        raise last or UpstreamUnavailable()

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, or exactly what the upstream asked for."""
        if retry_after is not None:
            return float(retry_after)
        ceiling = min(
            self.settings.upstream_backoff_max_seconds,
            self.settings.upstream_backoff_seconds * 2.0**retry,
        )
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    # --- streams ---------------------------------------------------------------------------------

    async def _read_stream(
        self, stream: CompletionStream, response: aiohttp.ClientResponse, request: ProviderRequest
    ) -> AsyncIterator[StreamChunk]:
        finished = False
        try:
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, "event:" lines
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    finished = True
                    break
                chunk = orjson.loads(payload)
                if "error" in chunk:
                    UPSTREAM_ERRORS.labels(self.name, "stream_error").inc()
                    message = (chunk.get("error") or {}).get(
                        "message"
                    ) or "The model provider failed mid-stream."
                    raise UpstreamError(str(message))
                usage = TokenUsage.from_openai(chunk.get("usage"))
                if usage is not None:
                    stream.usage = usage
                text = ""
                choices = chunk.get("choices")
                if choices:
                    choice = choices[0]
                    text = (choice.get("delta") or {}).get("content") or ""
                    if choice.get("finish_reason"):
                        stream.finish_reason = choice["finish_reason"]
                    if text:
                        stream.text_parts.append(text)
                yield StreamChunk(text, payload, usage_only=usage is not None and not choices)
            if finished:
                await _drain(response)
            elif stream.finish_reason is None:
                raise UpstreamError("The model provider ended the stream before finishing.")
        except TimeoutError as exc:  # aiohttp's read timeout is one
            UPSTREAM_ERRORS.labels(self.name, "timeout").inc()
            raise UpstreamTimeout("The model provider stopped sending mid-stream.") from exc
        except (aiohttp.ClientError, orjson.JSONDecodeError, ValueError) as exc:
            # ValueError: a line longer than the read buffer, or not UTF-8 JSON.
            UPSTREAM_ERRORS.labels(self.name, "stream_cut").inc()
            raise UpstreamError("The model provider's stream was cut off.") from exc
        finally:
            response.release()  # back to the pool when read to the end, else closed
            if stream.usage is None:
                # No final usage chunk (cut short, or an upstream that never sends one): count.
                stream.usage = TokenUsage(
                    request.prompt_tokens, count_text(stream.text, stream.model.encoding)
                )


async def _empty() -> AsyncIterator[StreamChunk]:
    return
    yield  # pragma: no cover


def _upstream_body(body: dict[str, Any], spec: ModelSpec, *, stream: bool) -> bytes:
    payload = dict(body)
    payload["model"] = spec.upstream_model
    if stream:
        payload["stream"] = True
        options = payload.get("stream_options")
        payload["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    else:
        payload.pop("stream", None)
        payload.pop("stream_options", None)
    return orjson.dumps(payload)


def _completion(raw: bytes, spec: ModelSpec, request: ProviderRequest) -> Completion:
    try:
        data = orjson.loads(raw)
        choice = data["choices"][0]
        text = (choice.get("message") or {}).get("content") or ""
        finish = choice.get("finish_reason")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
        UPSTREAM_ERRORS.labels("openai", "malformed").inc()
        raise UpstreamError("The model provider returned a response kiban cannot read.") from exc
    usage = TokenUsage.from_openai(data.get("usage")) or TokenUsage(
        request.prompt_tokens, count_text(text, spec.encoding)
    )
    return Completion(text=text, usage=usage, finish_reason=finish, model=spec, raw=raw)


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what follows ``[DONE]`` (the body's end), so the connection can be reused; an upstream
    that keeps the body open after it is not waited for."""
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            await response.content.read()
    except (TimeoutError, aiohttp.ClientError):
        response.close()


def _releaser(response: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
    async def release() -> None:
        response.release()  # closes the connection unless the body was read to its end

    return release


def _connection_attempt(provider: str) -> _Attempt:
    UPSTREAM_ERRORS.labels(provider, "connection").inc()
    return _Attempt(UpstreamUnavailable("Could not reach the model provider."), retry=True)


def _error_object(raw: bytes) -> Any:
    """The ``error`` object of an OpenAI error body (or the body itself; ``None``: not JSON)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return body


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - clock.now()).total_seconds())
        except (TypeError, ValueError):
            return None


def _status_attempt(status: int, headers: Mapping[str, str], body: Any) -> _Attempt:
    UPSTREAM_ERRORS.labels("openai", f"status_{status}").inc()
    detail = body.get("message") if isinstance(body, dict) else None
    code = body.get("code") if isinstance(body, dict) else None
    wait = _retry_after(headers)
    if status == 429 and code == "insufficient_quota":
        return _Attempt(
            UpstreamError(
                "The model provider's account has no quota left.", upstream_status=status
            ),
            retry=False,
        )
    if status in (400, 413, 422):
        # The upstream refused this request's content (a bad parameter, too long): the caller's
        # to fix, so it is a 400 with the upstream's own words, not a gateway failure.
        return _Attempt(
            InvalidRequest(
                f"The model provider rejected the request: {detail or status}",
                code="upstream_rejected_request",
            ),
            retry=False,
        )
    retry = status in _RETRYABLE_STATUS
    if status == 429 or status == 503:
        error: UpstreamFailure = UpstreamUnavailable(retry_after=wait, upstream_status=status)
    elif status in (408, 504):
        error = UpstreamTimeout(upstream_status=status)
    elif status in (401, 403):
        error = UpstreamError(
            "The model provider refused kiban's credentials (check OPENAI_API_KEY).",
            upstream_status=status,
        )
    elif status == 404:
        error = UpstreamError(
            "The model provider does not know this model (check the models file).",
            upstream_status=status,
        )
    else:
        error = UpstreamError(f"The model provider failed (HTTP {status}).", upstream_status=status)
    return _Attempt(error, retry=retry, wait=wait)
