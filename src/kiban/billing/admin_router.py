"""Billing for operators: ``/admin/billing`` lists subscriptions and the inbox, and re-applies."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from kiban.auth import AdminUser
from kiban.billing import inbox, operator, repository, service
from kiban.billing.dependencies import PlanCatalogDep
from kiban.billing.exceptions import UnknownEvent
from kiban.billing.fold import OUTCOMES
from kiban.billing.schemas import InboxEventOut, InboxPage, ReapplyOut, SubscriptionPage
from kiban.core import clock
from kiban.core.db import SessionDep
from kiban.core.dependencies import SessionmakerDep, SettingsDep
from kiban.core.errors import BadRequest

router = APIRouter(prefix="/admin/billing", tags=["admin"])


class UnknownOutcome(BadRequest):
    code = "unknown_outcome"
    default_message = "That is not an outcome of the webhook inbox."


@router.get("/subscriptions")
async def subscriptions(
    _: AdminUser,
    session: SessionDep,
    catalog: PlanCatalogDep,
    settings: SettingsDep,
    user_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> SubscriptionPage:
    """Subscriptions (newest first): user, plan, state now, period end and Stripe ids."""
    return await operator.subscription_page(
        session,
        catalog,
        now=clock.now(),
        grace=service.grace(settings),
        user_id=user_id,
        limit=limit,
        offset=offset,
    )


@router.get("/events")
async def events(
    _: AdminUser,
    session: SessionDep,
    outcome: Annotated[list[str] | None, Query(description=", ".join(OUTCOMES))] = None,
    type: Annotated[list[str] | None, Query()] = None,
    subscription_id: str | None = None,
    before: Annotated[
        int | None, Query(ge=1, description="The previous page's next_before.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> InboxPage:
    """The webhook inbox, latest first: type, created, received, outcome and why."""
    unknown = sorted(set(outcome or ()) - set(OUTCOMES))
    if unknown:
        raise UnknownOutcome(f"Unknown outcome {unknown[0]!r}.", extra={"outcomes": list(OUTCOMES)})
    return await operator.inbox_page(
        session,
        outcomes=tuple(outcome or ()),
        types=tuple(type or ()),
        subscription_id=subscription_id,
        before=before,
        limit=limit,
    )


@router.get("/events/{event_id}")
async def event(_: AdminUser, session: SessionDep, event_id: str) -> InboxEventOut:
    """One inbox event with its whole payload."""
    row = await repository.inbox_event(session, event_id)
    if row is None:
        raise UnknownEvent(f"The inbox has no event {event_id!r}.")
    return operator.inbox_event_out(row, with_payload=True)


@router.post("/events/{event_id}/reapply")
async def reapply(
    _: AdminUser, sessionmaker: SessionmakerDep, settings: SettingsDep, event_id: str
) -> ReapplyOut:
    """Apply an inbox event again (failed, after a fix; unmatched, once its user exists)."""
    applied = await inbox.reapply_event(sessionmaker, event_id, service.grace(settings))
    return ReapplyOut(event_id=event_id, outcome=applied.outcome, detail=applied.detail)
