"""``/v1``: the OpenAI-compatible surface (chat completions, embeddings, models) for the SDKs."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from kiban.auth import GatewayPrincipal
from kiban.core.errors import AppError
from kiban.gateway import flow
from kiban.gateway.dependencies import GatewayDep
from kiban.gateway.exceptions import openai_error_type
from kiban.gateway.route import GatewayRoute
from kiban.gateway.surfaces.embeddings import EMBEDDINGS, embedding_spec
from kiban.gateway.surfaces.openai_chat import CHAT


class OpenAIErrorRoute(GatewayRoute):
    """Errors on ``/v1`` also carry OpenAI's ``type`` and ``param``, so SDKs parse them."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except AppError as exc:
                exc.extra.setdefault("type", openai_error_type(exc.status_code))
                exc.extra.setdefault("param", None)
                raise

        return route


router = APIRouter(prefix="/v1", tags=["openai-compatible"], route_class=OpenAIErrorRoute)


@router.post(
    "/chat/completions",
    response_class=Response,
    responses={200: {"content": {"application/json": {}, "text/event-stream": {}}}},
)
async def chat_completions(
    request: Request, principal: GatewayPrincipal, gateway: GatewayDep
) -> Response:
    """OpenAI-compatible chat completion, streamed or not, with usage."""
    return await flow.serve(CHAT, request, principal, gateway)


@router.post("/embeddings", response_class=Response)
async def embeddings(
    request: Request, principal: GatewayPrincipal, gateway: GatewayDep
) -> Response:
    """OpenAI-compatible embeddings from the configured embedder, metered like chat."""
    return await flow.serve(EMBEDDINGS, request, principal, gateway)


def _embedding_model(gateway: Any) -> Any:
    embedder = gateway.retriever.embedder
    return embedding_spec(embedder) if embedder is not None else None


def _model(spec: Any) -> dict[str, Any]:
    return {"id": spec.name, "object": "model", "created": 0, "owned_by": spec.owned_by}


@router.get("/models", response_class=Response)
async def list_models(principal: GatewayPrincipal, gateway: GatewayDep) -> Response:
    """The models this kiban serves (OpenAI's list shape)."""
    data = [_model(gateway.catalog.models[name]) for name in gateway.catalog.names]
    embedding = _embedding_model(gateway)
    if embedding is not None:
        data.append(_model(embedding))
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


@router.get("/models/{model}", response_class=Response)
async def get_model(model: str, principal: GatewayPrincipal, gateway: GatewayDep) -> Response:
    """One model (OpenAI's shape), or an OpenAI-shaped 404."""
    embedding = _embedding_model(gateway)
    if embedding is not None and model == embedding.name:
        return Response(orjson.dumps(_model(embedding)), media_type="application/json")
    spec = gateway.catalog.resolve(model)
    return Response(orjson.dumps(_model(spec)), media_type="application/json")
