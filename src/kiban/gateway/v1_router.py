"""``/v1``: the OpenAI-compatible surface (chat completions, models) for the ``openai`` SDKs."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from kiban.auth.dependencies import CurrentPrincipal
from kiban.core.db import SessionDep
from kiban.core.errors import AppError
from kiban.gateway import grounding
from kiban.gateway.dependencies import GatewayDep
from kiban.gateway.exceptions import openai_error_type
from kiban.gateway.openai_compat import (
    ChatStreamFormat,
    completion_body,
    last_user_text,
    parse_chat,
    transcript,
    with_extension,
)
from kiban.gateway.providers.base import ProviderRequest, TokenUsage
from kiban.gateway.providers.extractive import NO_ANSWER, fixed_stream
from kiban.gateway.service import apply_cap
from kiban.gateway.streaming import CallStream
from kiban.gateway.tokenizer import count_messages, count_request_extras
from kiban.models import UsageStatus


class OpenAIErrorRoute(APIRoute):
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
    request: Request, principal: CurrentPrincipal, session: SessionDep, gateway: GatewayDep
) -> Response:
    """OpenAI-compatible chat completion, streamed or not, with usage."""
    call = gateway.begin(request, principal, "chat_completions")
    async with call.guard():
        call.model_name = gateway.catalog.default
        chat = parse_chat(await request.body())
        call.streamed = chat.stream
        call.model_name = chat.model or gateway.catalog.default
        spec = gateway.catalog.resolve(chat.model)
        call.model = spec
        call.prompt_text = transcript(chat.messages)
        grounded = chat.grounded or spec.provider == "extractive"
        # Tool schemas and earlier tool calls are billed as prompt too: reserve them.
        extras = count_request_extras(chat.body, spec.encoding)
        prompt_tokens = count_messages(chat.messages, spec.encoding) + extras
        reserve = prompt_tokens + (gateway.grounding_reserve(spec) if grounded else 0)
        ticket = await call.admit(reserve, chat.limits.requested)
        headers = ticket.headers or None
        question = last_user_text(chat.messages)
        context: list[Any] = []
        if grounded:
            chunks = (
                await gateway.retrieve(session, call, question, top_k=chat.top_k)
                if question
                else []
            )
            if not chunks:
                # Commit inside the guard: once a CallStream is returned, a failing commit at the
                # edge would leave the call with no one to finish it.
                await session.commit()
                if chat.stream:
                    return CallStream(
                        call,
                        fixed_stream(NO_ANSWER, spec),
                        ChatStreamFormat(call, chat.include_usage),
                        keepalive_seconds=gateway.settings.gateway_stream_keepalive_seconds,
                        headers=headers,
                        success_status=UsageStatus.NO_CONTEXT,
                    )
                outcome = await call.finish(
                    UsageStatus.NO_CONTEXT, usage=TokenUsage(), response_text=NO_ANSWER
                )
                return Response(
                    completion_body(call, NO_ANSWER, outcome, "stop"),
                    media_type="application/json",
                    headers=headers,
                )
            prompt = grounding.ground_messages(
                chat.messages,
                chunks,
                budget_tokens=gateway.settings.gateway_context_token_budget,
                encoding=spec.encoding,
            )
            call.sources = [grounding.source(c) for c in prompt.used]
            context = prompt.used
            chat.body["messages"] = prompt.messages
            prompt_tokens = count_messages(prompt.messages, spec.encoding) + extras
        apply_cap(chat.body, chat.limits, ticket.max_completion_tokens)
        provider_request = ProviderRequest(spec, chat.body, prompt_tokens, question, context)
        # The database work is done: commit now rather than hold a pool connection (there are
        # ten on SQLite) for as long as the model takes.
        await session.commit()
        provider = gateway.provider(spec)
        if chat.stream:
            return CallStream(
                call,
                await provider.stream(provider_request),
                ChatStreamFormat(call, chat.include_usage),
                keepalive_seconds=gateway.settings.gateway_stream_keepalive_seconds,
                headers=headers,
            )
        completion = await provider.complete(provider_request)
        outcome = await call.finish(
            UsageStatus.OK,
            usage=completion.usage,
            response_text=completion.text,
            served=completion.model,
        )
    if completion.raw is None:
        content = completion_body(call, completion.text, outcome, completion.finish_reason)
    elif call.sources:
        content = with_extension(completion.raw, call)
    else:
        content = completion.raw  # the upstream's bytes, untouched
    return Response(content, media_type="application/json", headers=headers)


def _model(spec: Any) -> dict[str, Any]:
    return {"id": spec.name, "object": "model", "created": 0, "owned_by": spec.owned_by}


@router.get("/models", response_class=Response)
async def list_models(principal: CurrentPrincipal, gateway: GatewayDep) -> Response:
    """The models this kiban serves (OpenAI's list shape)."""
    data = [_model(gateway.catalog.models[name]) for name in gateway.catalog.names]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


@router.get("/models/{model}", response_class=Response)
async def get_model(model: str, principal: CurrentPrincipal, gateway: GatewayDep) -> Response:
    """One model (OpenAI's shape), or an OpenAI-shaped 404."""
    spec = gateway.catalog.resolve(model)
    return Response(orjson.dumps(_model(spec)), media_type="application/json")
