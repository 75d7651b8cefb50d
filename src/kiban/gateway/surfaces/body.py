"""What every JSON surface checks first: the body decodes, is an object, names a model or none."""

from __future__ import annotations

from typing import Any

import orjson

from kiban.gateway.exceptions import InvalidRequest


def decoded(raw: bytes) -> Any:
    """The body's JSON (400 ``invalid_json`` otherwise)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (400 ``invalid_json`` otherwise)."""
    body = decoded(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def optional_model(body: dict[str, Any]) -> str | None:
    """The ``model`` asked for, if any (400 naming it when it is not a non-empty string)."""
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    return model
