"""The OpenAI-compatible provider: ``POST /chat/completions`` on one deployment, over aiohttp.

The wire protocol is spoken here, not through the ``openai`` SDK: the SDK's HTTP stack cost more
CPU per request than the rest of the gateway together (decision 0067), and the gateway only needs
its bytes. What the SDK did is kept: a bearer key, JSON bodies, OpenAI's error bodies read for
their message and code, ``Retry-After``/``retry-after-ms`` read, per-read timeouts.

A provider makes exactly one attempt per ``complete``/``stream`` against its one deployment and
raises ``UpstreamError``/``UpstreamUnavailable``/``UpstreamTimeout`` (with the upstream's status
and Retry-After) or ``InvalidRequest``; retries, failover to another deployment and fallback
models are the router's (``kiban.gateway.routing``, decision 0070). Responses are taken raw
(bytes) and only the usage, text and finish reason are read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson
import structlog

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
from kiban.gateway.tokenizer import count_text
from kiban.settings import Settings

log = structlog.get_logger("kiban.gateway.openai")


class OpenAIProvider:
    """Chat completions through one OpenAI-compatible deployment (OpenAI, Azure, vLLM, Ollama …)."""

    name = "openai"

    def __init__(self, settings: Settings, deployment: Deployment, pools: UpstreamPools) -> None:
        self.settings = settings
        self.deployment = deployment
        self._pools = pools
        self.base_url = deployment.base_url
        self._url = f"{deployment.base_url}/chat/completions"
        self._key_hint = deployment.api_key_env or "OPENAI_API_KEY"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if deployment.api_key:  # local servers (Ollama, llama.cpp, vLLM) often need none
            headers["Authorization"] = f"Bearer {deployment.api_key}"
        self._post_options: dict[str, Any] = {"headers": headers}
        if (deployment.timeout_seconds, deployment.connect_timeout_seconds) != (
            settings.upstream_timeout_seconds,
            settings.upstream_connect_timeout_seconds,
        ):  # the pool's timeouts are the settings'; this deployment has its own
            self._post_options["timeout"] = aiohttp.ClientTimeout(
                total=None,
                sock_connect=deployment.connect_timeout_seconds,
                sock_read=deployment.timeout_seconds,
            )

    async def aclose(self) -> None:
        """The pools are the router's, closed with it."""

    # --- the interface -------------------------------------------------------------------------

    async def complete(self, request: ProviderRequest) -> Completion:
        """One chat completion: one attempt."""
        spec = request.model
        model_id = self.deployment.model_id(spec.upstream_model)
        response = await self._post(_upstream_body(request.body, model_id, stream=False))
        try:
            raw = await response.read()
        except TimeoutError as exc:
            raise _timeout(self.name) from exc
        except aiohttp.ClientError as exc:  # the connection dropped mid-body
            raise _connection_error(self.name) from exc
        finally:
            response.release()
        return _completion(raw, spec, request)

    async def stream(self, request: ProviderRequest) -> CompletionStream:
        """Open a streamed completion: one attempt, answered when the upstream starts answering."""
        spec = request.model
        model_id = self.deployment.model_id(spec.upstream_model)
        response = await self._post(_upstream_body(request.body, model_id, stream=True))
        stream = CompletionStream(model=spec, chunks=_empty(), release=releaser(response))
        stream.chunks = self._read_stream(stream, response, request)
        return stream

    async def _post(self, body: bytes) -> aiohttp.ClientResponse:
        """Send one attempt; a 2xx response with its body unread, or the error it is."""
        session = self._pools.session(self.base_url)
        try:
            response = await session.post(self._url, data=body, **self._post_options)
        except TimeoutError as exc:  # aiohttp's connect timeout
            raise _timeout(self.name) from exc
        except aiohttp.ClientError as exc:  # refused, reset, DNS, TLS, a dropped keep-alive
            raise _connection_error(self.name) from exc
        if response.status < 400:
            return response
        try:
            raw = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            raw = b""
        finally:
            response.release()
        raise _status_error(response.status, response.headers, _error_object(raw), self._key_hint)

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
                await drain(response)
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


def _upstream_body(body: dict[str, Any], model_id: str, *, stream: bool) -> bytes:
    payload = dict(body)
    payload["model"] = model_id
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


def _connection_error(provider: str) -> UpstreamUnavailable:
    UPSTREAM_ERRORS.labels(provider, "connection").inc()
    return UpstreamUnavailable("Could not reach the model provider.")


def _timeout(provider: str) -> UpstreamTimeout:
    UPSTREAM_ERRORS.labels(provider, "timeout").inc()
    return UpstreamTimeout()


def _error_object(raw: bytes) -> Any:
    """The ``error`` object of an OpenAI error body (or the body itself; ``None``: not JSON)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return body


def _status_error(
    status: int, headers: Mapping[str, str], body: Any, key_hint: str = "OPENAI_API_KEY"
) -> UpstreamFailure | InvalidRequest:
    """The error an upstream's HTTP error status is (the router decides what to retry)."""
    UPSTREAM_ERRORS.labels("openai", f"status_{status}").inc()
    detail = body.get("message") if isinstance(body, dict) else None
    code = body.get("code") if isinstance(body, dict) else None
    wait = retry_after(headers)
    if status == 429 and code == "insufficient_quota":
        return UpstreamError(
            "The model provider's account has no quota left.", upstream_status=status
        )
    if status in (400, 413, 422):
        # The upstream refused this request's content (a bad parameter, too long): the caller's
        # to fix, so it is a 400 with the upstream's own words, not a gateway failure.
        return InvalidRequest(
            f"The model provider rejected the request: {detail or status}",
            code="upstream_rejected_request",
        )
    if status == 429 or status == 503:
        return UpstreamUnavailable(retry_after=wait, upstream_status=status)
    if status in (408, 504):
        return UpstreamTimeout(upstream_status=status, wait=wait)
    if status in (401, 403):
        return UpstreamError(
            f"The model provider refused kiban's credentials (check {key_hint}).",
            upstream_status=status,
        )
    if status == 404:
        return UpstreamError(
            "The model provider does not know this model (check the models file).",
            upstream_status=status,
        )
    return UpstreamError(
        f"The model provider failed (HTTP {status}).", upstream_status=status, wait=wait
    )
