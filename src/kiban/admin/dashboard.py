"""The admin dashboard (``/admin``) and the browser sign-in: server-rendered pages, no script."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from sqlalchemy import select

from kiban.admin import analytics, quotas, top_users, usage_log, users
from kiban.admin.analytics import Window
from kiban.admin.billing_page import billing_summary
from kiban.admin.charts import Line, bar_chart, line_chart
from kiban.admin.exceptions import InvalidWindow
from kiban.admin.pages import (
    STATIC_DIR,
    admin_or_response,
    endpoint_name,
    endpoint_path,
    fmt_ms,
    fmt_usd,
    render,
)
from kiban.admin.schemas import GroupBy, Interval, RankBy, Timeseries
from kiban.admin.web_auth import (
    REFRESH_COOKIE,
    check_csrf,
    clear_session_cookies,
    safe_next,
    set_session_cookies,
)
from kiban.auth import KeyRingDep, sign_in
from kiban.auth import logout as end_sign_in
from kiban.billing import grace
from kiban.core import clock
from kiban.core.db import SessionDep
from kiban.core.dependencies import SessionmakerDep, SettingsDep
from kiban.core.errors import AppError
from kiban.models import User
from kiban.settings import Settings

router = APIRouter(include_in_schema=False)

RANGES = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
PAGE_SIZE = 50


# --- favicon -----------------------------------------------------------------------------------


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    """The dashboard's icon, for browsers that ask for /favicon.ico whatever the page links."""
    return FileResponse(
        STATIC_DIR / "favicon.svg",
        media_type="image/svg+xml",
        headers={"Cache-Control": "public, max-age=86400"},
    )


# --- sign-in -----------------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request, settings: SettingsDep, next: str | None = None) -> Response:
    """The sign-in form."""
    context = {"next": safe_next(next, "/account"), "error": None}
    return render(request, "login.html", context, settings=settings, viewer=None)


@router.post("/login")
async def login(
    request: Request,
    session: SessionDep,
    sessionmaker: SessionmakerDep,
    keyring: KeyRingDep,
    settings: SettingsDep,
    email: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=1024)],
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/account",
) -> Response:
    """Sign in with email and password (the auth service's throttled sign-in)."""
    target = safe_next(next, "/account")
    try:
        check_csrf(request, csrf_token)
        issued = await sign_in(
            session,
            sessionmaker,
            keyring,
            settings,
            email=email,
            password=password,
            address=request.client.host if request.client else "unknown",
            web=True,
        )
    except AppError as e:
        context = {"next": target, "error": e.message, "email": email}
        return render(
            request,
            "login.html",
            context,
            settings=settings,
            viewer=None,
            status_code=e.status_code,
        )
    response = RedirectResponse(target, status_code=303)
    set_session_cookies(response, request, settings, issued)
    return response


@router.post("/logout")
async def logout(
    request: Request, session: SessionDep, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    """Sign out: revoke the session's refresh tokens and clear the cookies."""
    check_csrf(request, csrf_token)
    token = request.cookies.get(REFRESH_COOKIE)
    if token:
        await end_sign_in(session, token)
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookies(response)
    return response


# --- pages -------------------------------------------------------------------------------------


def _time(text: str | None, name: str) -> datetime | None:
    # Form fields arrive as text ('' when left empty; datetime-local has no seconds or zone).
    if not text or not text.strip():
        return None
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidWindow(f"{name!r} is not a date and time: {text!r}.") from e


def _window(
    start_text: str | None, end_text: str | None, default: timedelta = RANGES["7d"]
) -> Window:
    """The window of a page: the form's times if given (UTC), else the last ``default``."""
    now = clock.now()
    start, end = _time(start_text, "from"), _time(end_text, "to")
    if start or end:
        return Window.parse(start, end, now)
    return Window(now - default, now)


def _charts(series: Timeseries) -> dict[str, Any]:
    points = series.series[0].points if series.series else []
    xs = [p.bucket for p in points]
    x_format = "%H:%M" if series.interval is Interval.HOUR else "%m-%d"
    return {
        "requests": line_chart(
            "Requests",
            xs,
            [
                Line("requests", [p.requests for p in points]),
                Line("errors", [p.by_status.get("error", 0) for p in points]),
            ],
            x_format=x_format,
            integer=True,
        ),
        "cost": line_chart(
            "Cost (USD)",
            xs,
            [Line("cost", [float(p.cost_usd) for p in points])],
            y_format=lambda v: fmt_usd(v),
            x_format=x_format,
        ),
        "latency": line_chart(
            "Latency percentiles",
            xs,
            [
                Line("p50", [p.latency_p50_ms for p in points]),
                Line("p95", [p.latency_p95_ms for p in points]),
                Line("p99", [p.latency_p99_ms for p in points]),
            ],
            y_format=fmt_ms,
            x_format=x_format,
        ),
    }


@router.get("/admin")
async def overview(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    keyring: KeyRingDep,
    range_: Annotated[str | None, Query(alias="range")] = None,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
) -> Response:
    """The dashboard: users and summary cards, charts, model and endpoint mix, top users, quotas."""
    viewer, denied = await admin_or_response(request, session, settings, keyring)
    if denied is not None:
        return denied
    try:
        window = _window(start, end, RANGES.get(range_ or "7d", RANGES["7d"]))
    except InvalidWindow as e:
        return render(
            request,
            "message.html",
            {"title": "Invalid window", "message": e.message},
            settings=settings,
            viewer=viewer,
            status_code=400,
        )
    interval = Interval.HOUR if window.end - window.start <= timedelta(hours=48) else Interval.DAY
    context = {
        "window": window,
        "range": range_ if not (start or end) else None,
        "ranges": list(RANGES),
        "summary": await analytics.summary(session, window),
        "user_counts": await users.count_users(session, window),
        "charts": _charts(await analytics.timeseries(session, window, interval, None)),
        "model_mix": bar_chart(
            "Requests by model",
            [
                (m.group or "–", m.requests)
                for m in await analytics.mix(session, window, GroupBy.MODEL)
            ],
        ),
        "endpoint_mix": bar_chart(
            "Requests by endpoint",
            [
                (endpoint_path(m.group), m.requests)
                for m in await analytics.mix(session, window, GroupBy.ENDPOINT)
            ],
        ),
        "top_users": await top_users.top_users(session, window, RankBy.COST, 10),
        "quotas": await quotas.quota_consumption(
            session, clock.now(), request.app.state.plans, grace(settings)
        ),
        "deployments": _deployments(request),
    }
    return render(request, "overview.html", context, settings=settings, viewer=viewer)


def _deployments(request: Request) -> list[dict[str, object]]:
    """Each deployment's health as this process's router sees it (none without a gateway)."""
    gateway = getattr(request.app.state, "gateway", None)
    router = getattr(gateway, "router", None)
    return router.snapshot() if router is not None else []


@router.get("/admin/requests")
async def requests_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    keyring: KeyRingDep,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
    user: str | None = None,
    model: str | None = None,
    endpoint: str | None = None,
    status: str | None = None,
    before: Annotated[int | None, Query(ge=1, le=usage_log.MAX_ID)] = None,
) -> Response:
    """The usage log: every request's tokens, cost, timings, status and sources; filterable."""
    viewer, denied = await admin_or_response(request, session, settings, keyring)
    if denied is not None:
        return denied
    now = clock.now()
    notice = None
    try:
        window = _window(start, end, timedelta(days=30))
    except InvalidWindow as e:
        window, notice = Window(now - timedelta(days=30), now), e.message
    endpoint = endpoint_name(endpoint.strip()) if endpoint else None
    user_id = None
    if user and notice is None:
        user_id = await _find_user(session, user.strip())
        if user_id is None:
            notice = f"No user matches {user!r}."
    where = usage_log.LogFilter(
        window=window,
        user_id=user_id,
        models=(model,) if model else (),
        endpoints=(endpoint,) if endpoint else (),
        statuses=(status,) if status else (),
    )
    page = (
        await usage_log.usage_page(session, where, before=before, limit=PAGE_SIZE)
        if notice is None
        else None
    )
    filters = {
        "from": start or "",
        "to": end or "",
        "user": user or "",
        "model": model or "",
        "endpoint": endpoint or "",
        "status": status or "",
    }
    kept = {k: v for k, v in filters.items() if v}
    older = page.next_before if page else None
    context = {
        "page": page,
        "notice": notice,
        "filters": filters,
        "newest_url": "/admin/requests?" + urlencode(kept),
        "older_url": "/admin/requests?" + urlencode({**kept, "before": older}) if older else None,
        "choices": await usage_log.distinct_values(session, Window(now - timedelta(days=90), now)),
        "before": before,
    }
    return render(request, "requests.html", context, settings=settings, viewer=viewer)


async def _find_user(session: SessionDep, text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    found = await session.scalar(select(User.id).where(User.email == text.lower()))
    return found


@router.get("/admin/accounts/{user_id}")
async def user_page(
    request: Request,
    user_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    keyring: KeyRingDep,
) -> Response:
    """One user: plan, subscription, quota this period, usage, and recent requests."""
    viewer, denied = await admin_or_response(request, session, settings, keyring)
    if denied is not None:
        return denied
    user = await session.get(User, user_id)
    if user is None:
        missing = {"title": "No such user", "message": f"No user with id {user_id}."}
        return render(
            request, "message.html", missing, settings=settings, viewer=viewer, status_code=404
        )
    context = await account_context(request, session, settings, user)
    context["subject"] = user
    return render(request, "user.html", context, settings=settings, viewer=viewer)


async def account_context(
    request: Request, session: SessionDep, settings: Settings, user: User
) -> dict[str, Any]:
    """What the user page and the account page both show: plan, subscription, quota, usage."""
    now = clock.now()
    (quota,) = await quotas.user_quotas(
        session, [user], now, request.app.state.plans, grace(settings)
    )
    period = Window(quota.entitlement.period_start, min(now, quota.entitlement.period_end))
    if period.start >= period.end:
        period = Window(period.start, period.start + timedelta(seconds=1))
    recent = await usage_log.usage_page(session, usage_log.LogFilter(user_id=user.id), limit=20)
    return {
        "quota": quota,
        "period_summary": await analytics.summary(session, period, user_id=user.id),
        "recent": recent.entries,
        "billing": await billing_summary(request, session, settings, user),
    }
