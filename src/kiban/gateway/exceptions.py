"""Gateway errors. Each carries an OpenAI-style ``type`` and ``param`` so that ``/v1`` routes
answer in the shape the ``openai`` SDKs parse, while keeping kiban's own ``code``/``message``.

Hierarchy::

    AppError
    ├── BadRequest                400 invalid_json, invalid_request, …
    │   └── InvalidRequest        400 (param names the offending field)
    │       └── Untranslatable    400 untranslatable  a field one wire format has, the other not
    ├── NotFound
    │   └── ModelNotFound         404 model_not_found
    ├── PayloadTooLarge
    │   └── InputTooLarge         413 input_too_large, too_many_inputs (extra: limit)
    ├── ServiceUnavailable
    │   └── EmbeddingsUnavailable 503 embeddings_unavailable  no embedder configured
    └── UpstreamFailure
        ├── UpstreamError             502 upstream_error        the upstream failed or refused
        ├── UpstreamUnavailable       503 upstream_unavailable  unreachable, overloaded
        └── UpstreamTimeout           504 upstream_timeout      no answer within the deadline
"""

from __future__ import annotations

from typing import Any

from kiban.core.errors import AppError, BadRequest, NotFound, PayloadTooLarge, ServiceUnavailable


def openai_error_type(status_code: int) -> str:
    """The OpenAI ``error.type`` for an HTTP status."""
    if status_code == 401:
        return "authentication_error"
    if status_code == 403:
        return "permission_error"
    if status_code == 429:
        return "rate_limit_error"
    if status_code >= 500:
        return "api_error"
    return "invalid_request_error"


def anthropic_error_type(status_code: int) -> str:
    """Anthropic's ``error.type`` for an HTTP status (what its SDKs and Claude Code read)."""
    if status_code == 401:
        return "authentication_error"
    if status_code == 403:
        return "permission_error"
    if status_code == 404:
        return "not_found_error"
    if status_code == 413:
        return "request_too_large"
    if status_code == 429:
        return "rate_limit_error"
    if status_code in (503, 529):
        return "overloaded_error"
    if status_code >= 500:
        return "api_error"
    return "invalid_request_error"


def _openai_extra(
    status_code: int, param: str | None, extra: dict[str, Any] | None
) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": openai_error_type(status_code), "param": param}
    fields.update(extra or {})
    return fields


class InvalidRequest(BadRequest):
    code = "invalid_request"
    default_message = "The request is not valid."

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, code=code, hint=hint, extra=_openai_extra(400, param, None))


class Untranslatable(InvalidRequest):
    """A field or content block that cannot cross between OpenAI's and Anthropic's formats: it
    is refused, never dropped."""

    code = "untranslatable"

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message, param=param)


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str, available: list[str]) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.",
            hint=f"Available models: {', '.join(available)} (GET /v1/models).",
            extra=_openai_extra(404, "model", None),
        )


class InputTooLarge(PayloadTooLarge):
    code = "input_too_large"

    def __init__(self, message: str, *, limit: int, param: str, code: str | None = None) -> None:
        super().__init__(message, code=code, extra=_openai_extra(413, param, {"limit": limit}))


class EmbeddingsUnavailable(ServiceUnavailable):
    code = "embeddings_unavailable"
    default_message = "No embedder is configured."

    def __init__(self) -> None:
        super().__init__(
            hint="Set KIBAN_EMBEDDER=local (or openai, with KIBAN_EMBEDDING_BASE_URL).",
            extra=_openai_extra(503, None, None),
        )


class UpstreamFailure(AppError):
    """The upstream could not give an answer (after retries and fallbacks).

    ``retry_after`` is told to the client (a ``Retry-After`` header); ``wait`` is what the
    upstream asked of kiban before another attempt (the router's), ``retry_after`` by default.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        wait: float | None = None,
    ) -> None:
        headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
        super().__init__(
            message, headers=headers, extra=_openai_extra(self.status_code, None, None)
        )
        self.retry_after = retry_after
        self.upstream_status = upstream_status
        self.wait = wait if wait is not None else retry_after


class UpstreamError(UpstreamFailure):
    status_code = 502
    code = "upstream_error"
    default_message = "The model provider returned an error."


class UpstreamUnavailable(UpstreamFailure):
    status_code = 503
    code = "upstream_unavailable"
    default_message = "The model provider is unavailable or overloaded right now."


class UpstreamTimeout(UpstreamFailure):
    status_code = 504
    code = "upstream_timeout"
    default_message = "The model provider did not answer in time."
