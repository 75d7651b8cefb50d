"""``/ai``: grounded questions (JSON or server-sent events) and the caller's usage ledger."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from kiban.auth import CurrentPrincipal, GatewayPrincipal
from kiban.core.db import SessionDep
from kiban.core.errors import Forbidden
from kiban.gateway import flow
from kiban.gateway.dependencies import GatewayDep
from kiban.gateway.logs import list_records
from kiban.gateway.route import GatewayRoute
from kiban.gateway.schemas import AskRequest, AskResponse, LogEntry, LogPage
from kiban.gateway.surfaces import ask
from kiban.models import UsageStatus
from kiban.usage import RecordFilter

router = APIRouter(prefix="/ai", tags=["ai"], route_class=GatewayRoute)

_ASK_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": AskRequest.model_json_schema()}},
    }
}


@router.post("/test", response_model=AskResponse, openapi_extra=_ASK_BODY)
async def ask_once(request: Request, principal: GatewayPrincipal, gateway: GatewayDep) -> Response:
    """Answer a question in one JSON response (grounded in your documents unless grounded=false)."""
    return await flow.serve(ask.ONCE, request, principal, gateway)


@router.post(
    "/stream",
    openapi_extra=_ASK_BODY,
    response_class=Response,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "delta events, then done (or error).",
        }
    },
)
async def ask_streamed(
    request: Request, principal: GatewayPrincipal, gateway: GatewayDep
) -> Response:
    """Answer a question as server-sent events: ``delta`` events, then one ``done`` event."""
    return await flow.serve(ask.STREAMED, request, principal, gateway)


@router.get("/logs", response_model=LogPage)
async def logs(
    principal: CurrentPrincipal,
    session: SessionDep,
    endpoint: Annotated[
        str | None, Query(description="ai_test, ai_stream or chat_completions")
    ] = None,
    model: str | None = None,
    status: Annotated[UsageStatus | None, Query()] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
    user_id: Annotated[
        uuid.UUID | None, Query(description="Admins: another user's records")
    ] = None,
    all_users: Annotated[
        bool, Query(alias="all", description="Admins: everyone's records")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> LogPage:
    """Your usage ledger, newest first (admins may pass user_id, or all=true)."""
    me = principal.user
    if ((user_id is not None and user_id != me.id) or all_users) and not me.is_admin:
        raise Forbidden("Only admins can read other users' records.", code="admin_required")
    owner = None if all_users and user_id is None else (user_id or me.id)
    rows, next_cursor = await list_records(
        session,
        RecordFilter(
            user_id=owner,
            endpoint=endpoint,
            model=model,
            status=status.value if status else None,
            since=_aware(since),
            until=_aware(until),
        ),
        limit=limit,
        cursor=cursor,
    )
    return LogPage(items=[LogEntry.model_validate(r) for r in rows], next_cursor=next_cursor)


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
