"""``/v1/embeddings``: OpenAI's embeddings wire format, served by the configured embedder.

The request goes through the one flow (``flow.serve``): authenticated by the route, admitted
(plan, rate window, one reservation of the inputs' tokens and no completion), then embedded
outside any transaction, and finished once: the ledger records it as endpoint
``embeddings`` with its prompt tokens and the cost from the price table.

Accepted: ``input`` (a string or an array of strings; token arrays are refused, the embedder
has its own tokenizer), ``model`` (the embedder's name; absent means it), ``encoding_format``
(``float`` or ``base64``: little-endian float32, what the ``openai`` SDK asks for by default),
``dimensions`` (only where the model can shorten its vectors), ``user`` (ignored), and kiban's
``input_type`` (``query``, the default, or ``passage``: e5's two prefixes).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson

from kiban.gateway.call import Call
from kiban.gateway.catalog import ModelSpec
from kiban.gateway.exceptions import (
    EmbeddingsUnavailable,
    InputTooLarge,
    InvalidRequest,
    ModelNotFound,
    UpstreamError,
)
from kiban.gateway.flow import Answer, Intent, Limits, Surface
from kiban.gateway.providers.base import TokenUsage
from kiban.gateway.service import Gateway
from kiban.gateway.surfaces.body import json_object, optional_model
from kiban.knowledge import Embedder, EmbeddingUnavailable
from kiban.models import UsageStatus

ENDPOINT = "embeddings"


def embedding_spec(embedder: Embedder) -> ModelSpec:
    """The embedder as a model the admission, the prices and the ledger know."""
    return ModelSpec(
        name=embedder.name,
        provider="embeddings",
        upstream_model=embedder.model,
        context_window=0,
        max_output_tokens=0,
        description=embedder.description,
        owned_by="kiban" if embedder.name == embedder.model else "openai",
    )


def parse_embeddings(raw: bytes) -> Intent:
    """The request, checked (400 naming the field otherwise)."""
    body = json_object(raw)
    model = optional_model(body)
    value = body.get("input")
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest(
            "'input' must be a string or a non-empty array of strings.", param="input"
        )
    for index, item in enumerate(inputs):
        if not isinstance(item, str):
            raise InvalidRequest(
                f"input[{index}] must be a string (token arrays are not accepted).",
                param=f"input[{index}]",
            )
        if not item.strip():
            raise InvalidRequest(f"input[{index}] is empty.", param=f"input[{index}]")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequest(
            "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
    ):
        raise InvalidRequest("'dimensions' must be a positive integer.", param="dimensions")
    kind = body.get("input_type", "query")
    if kind == "document":
        kind = "passage"
    if kind not in ("query", "passage"):
        raise InvalidRequest("'input_type' must be 'query' or 'passage'.", param="input_type")
    return Intent(
        model=model,
        body={"input": inputs, "encoding_format": encoding, "dimensions": dimensions, "kind": kind},
        limits=Limits(0),
    )


def _encoded(vector: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


class EmbeddingsSurface(Surface):
    endpoint = ENDPOINT

    def parse(self, raw: bytes) -> Intent:
        return parse_embeddings(raw)

    async def respond(self, gateway: Gateway, call: Call, intent: Intent) -> Answer | None:
        """Admit, embed, record: the whole call (``flow.serve`` writes the body)."""
        embedder = gateway.retriever.embedder
        call.model_name = intent.model or (embedder.name if embedder else "")
        if embedder is None:
            raise EmbeddingsUnavailable()
        if intent.model is not None and intent.model != embedder.name:
            raise ModelNotFound(intent.model, [embedder.name])
        call.model = embedding_spec(embedder)
        inputs: list[str] = intent.body["input"]
        settings = gateway.settings
        if len(inputs) > settings.embeddings_max_inputs:
            raise InputTooLarge(
                f"{len(inputs)} inputs; at most {settings.embeddings_max_inputs} per request.",
                code="too_many_inputs",
                limit=settings.embeddings_max_inputs,
                param="input",
            )
        for index, text in enumerate(inputs):
            tokens = embedder.count_tokens(text)
            if tokens > settings.embeddings_max_input_tokens:
                raise InputTooLarge(
                    f"input[{index}] has {tokens} tokens; at most "
                    f"{settings.embeddings_max_input_tokens} per input.",
                    limit=settings.embeddings_max_input_tokens,
                    param=f"input[{index}]",
                )
        dimensions = intent.body["dimensions"]
        if dimensions is not None and not embedder.allows_dimensions(dimensions):
            raise InvalidRequest(
                f"{embedder.name} makes vectors of {embedder.dimensions} dimensions and cannot "
                f"shorten them to {dimensions}.",
                param="dimensions",
            )
        call.prompt_text = "\n".join(inputs)
        estimate = sum(embedder.count_tokens(t) for t in inputs)
        await call.admit(estimate, 0)
        try:
            vectors, tokens = await embedder.embed_counted(inputs, intent.body["kind"], dimensions)
        except EmbeddingUnavailable as e:
            raise UpstreamError(f"The embeddings upstream failed: {e}") from e
        outcome = await call.finish(
            UsageStatus.OK, usage=TokenUsage(prompt_tokens=tokens, reported=True)
        )
        encoding = intent.body["encoding_format"]
        raw = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": _encoded(v, encoding)}
                    for i, v in enumerate(vectors)
                ],
                "model": embedder.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
        return Answer("", None, outcome, raw)

    def body(self, call: Call, answer: Answer) -> bytes:
        assert answer.raw is not None
        return answer.raw


EMBEDDINGS = EmbeddingsSurface()
