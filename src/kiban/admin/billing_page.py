"""The dashboard's billing page (``/admin/billing``) and the subscription summary of one user.

The page reads what the JSON admin API reads (``billing.operator``): subscriptions with their
state now, and the webhook inbox with its counts per outcome, keyset-paged. Its one form
re-applies an inbox event (``billing.inbox.reapply_event``, its own transaction) and redirects
back to the page it came from, which then says what the event's outcome is now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.admin import usage_log
from kiban.admin.exceptions import CsrfFailed
from kiban.admin.pages import admin_or_response, render
from kiban.admin.web_auth import Viewer, check_csrf, finish, safe_next
from kiban.auth import KeyRingDep
from kiban.billing import (
    FAILED,
    OUTCOMES,
    PENDING,
    UNMATCHED,
    PlanCatalog,
    UnknownEvent,
    customer_of_user,
    grace,
    inbox_event,
    inbox_page,
    reapply_event,
    subscription_page,
    subscription_view,
)
from kiban.core import clock
from kiban.core.db import SessionDep
from kiban.core.dependencies import SessionmakerDep, SettingsDep
from kiban.models import User
from kiban.models.billing import SubscriptionState
from kiban.settings import Settings

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
PAGE_PATH = "/admin/billing"
# The filters offered first: what waits for an operator, then the rest of the vocabulary.
OUTCOME_FILTERS = (
    PENDING,
    UNMATCHED,
    FAILED,
    *(o for o in OUTCOMES if o not in (PENDING, UNMATCHED, FAILED)),
)


# --- one user's subscription (account page and user page) -------------------------------------


@dataclass(frozen=True)
class BillingSummary:
    """A user's plan and subscription as the account pages show them."""

    plan: str  # the plan's label
    status: SubscriptionState
    current_period_end: datetime | None
    cancel_at_period_end: bool
    customer_id: str | None  # the Stripe customer, once the user has started a checkout
    configured: bool  # whether this server talks to Stripe at all

    @property
    def period_phrase(self) -> str | None:
        """'renews on' or 'ends on' before the period end; None where no date applies."""
        if self.current_period_end is None or self.status in (
            SubscriptionState.FREE,
            SubscriptionState.EXPIRED,
        ):
            return None
        if self.cancel_at_period_end or self.status is SubscriptionState.CANCELED:
            return "ends on"
        return "renews on"

    @property
    def can_open_portal(self) -> bool:
        return self.configured and self.customer_id is not None


def _catalog(request: Request) -> PlanCatalog:
    # As billing.dependencies.get_catalog: the catalog checked at start-up.
    catalog: PlanCatalog = request.app.state.plans
    return catalog


async def billing_summary(
    request: Request, session: AsyncSession, settings: Settings, user: User
) -> BillingSummary:
    """The user's plan, subscription state, period end, and whether the portal can open."""
    catalog = _catalog(request)
    view = await subscription_view(session, catalog, settings, user)
    plan = catalog.plans.get(view.plan)
    customer = await customer_of_user(session, user.id)
    return BillingSummary(
        plan=plan.label if plan else view.plan,
        status=view.status,
        current_period_end=view.current_period_end,
        cancel_at_period_end=view.cancel_at_period_end,
        customer_id=customer.stripe_customer_id if customer else None,
        configured=getattr(request.app.state, "stripe", None) is not None,
    )


# --- the page ---------------------------------------------------------------------------------


def _url(params: dict[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "", 0)}
    return PAGE_PATH + ("?" + urlencode(kept) if kept else "")


@router.get(PAGE_PATH)
async def billing_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    keyring: KeyRingDep,
    outcome: str | None = None,
    subscription_id: Annotated[str | None, Query(max_length=255)] = None,
    before: Annotated[int | None, Query(ge=1, le=usage_log.MAX_ID)] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    reapplied: Annotated[str | None, Query(max_length=255)] = None,
) -> Response:
    """Subscriptions and the webhook inbox, filtered by outcome, with a re-apply per event."""
    viewer, denied = await admin_or_response(request, session, settings, keyring)
    if denied is not None:
        return denied
    outcome = outcome or None
    subscription_id = (subscription_id or "").strip() or None
    notice = None
    if outcome is not None and outcome not in OUTCOMES:
        notice = f"{outcome!r} is not an outcome of the inbox (one of: {', '.join(OUTCOMES)})."
    subscriptions = await subscription_page(
        session,
        _catalog(request),
        now=clock.now(),
        grace=grace(settings),
        limit=PAGE_SIZE,
        offset=offset,
    )
    events = await inbox_page(
        session,
        outcomes=(outcome,) if outcome and notice is None else (),
        subscription_id=subscription_id,
        before=before,
        limit=PAGE_SIZE,
    )
    filters = {"outcome": outcome, "subscription_id": subscription_id}
    here = {**filters, "before": before, "offset": offset}
    more_subscriptions = offset + len(subscriptions.items) < subscriptions.total
    context = {
        "subscriptions": subscriptions,
        "events": events if notice is None else None,
        "notice": notice,
        "outcome": outcome,
        "subscription_id": subscription_id or "",
        "outcome_filters": [
            (None, "all", sum(events.counts.values()), _url({**filters, "outcome": None})),
            *(
                (o, o, events.counts.get(o, 0), _url({**filters, "outcome": o}))
                for o in OUTCOME_FILTERS
            ),
        ],
        "here": _url(here),
        "newest_url": _url({**filters, "offset": offset}) if before else None,
        "older_url": (
            _url({**filters, "offset": offset, "before": events.next_before})
            if events.next_before
            else None
        ),
        "more_subscriptions_url": (
            _url({**here, "offset": offset + PAGE_SIZE}) if more_subscriptions else None
        ),
        "first_subscriptions_url": _url({**here, "offset": 0}) if offset else None,
        "reapplied": await _reapplied(session, reapplied) if reapplied else None,
    }
    return render(request, "billing.html", context, settings=settings, viewer=viewer)


@dataclass(frozen=True)
class Reapplied:
    event_id: str
    outcome: str | None  # None: the inbox has no such event
    detail: str | None


async def _reapplied(session: AsyncSession, event_id: str) -> Reapplied:
    # What the event's row says now, not what the redirect's query claims.
    row = await inbox_event(session, event_id)
    if row is None:
        return Reapplied(event_id, None, None)
    return Reapplied(event_id, row.outcome, row.detail)


def _back(value: str | None, event_id: str) -> str:
    """The billing page the form came from (never elsewhere), noting the event re-applied."""
    target = safe_next(value, PAGE_PATH)
    parts = urlsplit(target)
    if parts.path != PAGE_PATH:
        parts = urlsplit(PAGE_PATH)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "reapplied"]
    return PAGE_PATH + "?" + urlencode([*query, ("reapplied", event_id)])


def _message(
    request: Request, settings: Settings, viewer: Viewer | None, title: str, text: str, status: int
) -> Response:
    context = {"title": title, "message": text}
    return render(
        request, "message.html", context, settings=settings, viewer=viewer, status_code=status
    )


@router.post(PAGE_PATH + "/inbox/{event_id}/reapply")
async def reapply(
    request: Request,
    event_id: str,
    session: SessionDep,
    sessionmaker: SessionmakerDep,
    settings: SettingsDep,
    keyring: KeyRingDep,
    csrf_token: Annotated[str, Form()] = "",
    back: Annotated[str, Form(max_length=2000)] = PAGE_PATH,
) -> Response:
    """Apply an inbox event again, then back to the billing page, which shows its outcome."""
    viewer, denied = await admin_or_response(request, session, settings, keyring)
    if denied is not None:
        return denied
    try:
        check_csrf(request, csrf_token)
    except CsrfFailed as e:
        return _message(request, settings, viewer, "Not re-applied", e.message, e.status_code)
    # Re-applying runs in a transaction of its own; end this request's first, so that a session
    # renewal it wrote does not hold SQLite's single writer lock against it.
    await session.commit()
    try:
        await reapply_event(sessionmaker, event_id, grace(settings))
    except UnknownEvent as e:
        return _message(request, settings, viewer, "No such event", e.message, e.status_code)
    return finish(
        RedirectResponse(_back(back, event_id), status_code=303), request, settings, viewer
    )
