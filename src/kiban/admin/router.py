"""HTTP routes of /admin/analytics: summary, time series, top users, quotas, usage log, export."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from kiban.admin import analytics, quotas, usage_log
from kiban.admin import top_users as ranking
from kiban.admin.dependencies import AnalyticsAdmin, WindowDep
from kiban.admin.schemas import (
    GroupBy,
    Interval,
    LogPage,
    MixEntry,
    QuotaConsumption,
    RankBy,
    Summary,
    Timeseries,
    TopUsers,
)
from kiban.admin.web_auth import set_session_cookies
from kiban.billing import PlanCatalogDep, grace
from kiban.core import clock
from kiban.core.db import SessionDep
from kiban.core.dependencies import SettingsDep

router = APIRouter(prefix="/admin/analytics", tags=["admin"])


@router.get("/summary")
async def summary(_: AnalyticsAdmin, session: SessionDep, window: WindowDep) -> Summary:
    """Requests, tokens, cost, error and no-context rates, latency and TTFT percentiles."""
    return await analytics.summary(session, window)


@router.get("/timeseries")
async def timeseries(
    _: AnalyticsAdmin,
    session: SessionDep,
    window: WindowDep,
    interval: Interval = Interval.DAY,
    group_by: GroupBy | None = None,
) -> Timeseries:
    """The summary's figures per hour or day, optionally per model, endpoint, status or plan."""
    return await analytics.timeseries(session, window, interval, group_by)


@router.get("/mix")
async def mix(
    _: AnalyticsAdmin, session: SessionDep, window: WindowDep, by: GroupBy = GroupBy.MODEL
) -> list[MixEntry]:
    """Requests, tokens and cost per model, endpoint, status or plan over the window."""
    return await analytics.mix(session, window, by)


@router.get("/top-users")
async def top_users(
    _: AnalyticsAdmin,
    session: SessionDep,
    window: WindowDep,
    by: RankBy = RankBy.COST,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> TopUsers:
    """The users with the most cost, tokens or requests in the window."""
    return await ranking.top_users(session, window, by, limit)


@router.get("/quotas")
async def quota_consumption(
    _: AnalyticsAdmin,
    session: SessionDep,
    catalog: PlanCatalogDep,
    settings: SettingsDep,
    threshold: Annotated[float, Query(gt=0, le=1)] = quotas.NEAR_LIMIT,
) -> QuotaConsumption:
    """Per plan: users with usage this period, and the share of them near or at their limit."""
    return await quotas.quota_consumption(session, clock.now(), catalog, grace(settings), threshold)


@router.get("/usage")
async def usage(
    _: AnalyticsAdmin,
    session: SessionDep,
    window: WindowDep,
    user_id: uuid.UUID | None = None,
    model: Annotated[list[str] | None, Query()] = None,
    endpoint: Annotated[list[str] | None, Query()] = None,
    status: Annotated[list[str] | None, Query()] = None,
    before: Annotated[
        int | None,
        Query(ge=1, le=usage_log.MAX_ID, description="Cursor: the previous page's next_before."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> LogPage:
    """Ledger records, newest first, filtered and keyset-paginated."""
    where = usage_log.LogFilter(
        window=window,
        user_id=user_id,
        models=tuple(model or ()),
        endpoints=tuple(endpoint or ()),
        statuses=tuple(status or ()),
    )
    return await usage_log.usage_page(session, where, before=before, limit=limit)


@router.get("/export.csv", response_class=StreamingResponse)
async def export_csv(
    _: AnalyticsAdmin, request: Request, settings: SettingsDep, window: WindowDep
) -> StreamingResponse:
    """The window's ledger records as CSV, streamed (memory stays flat for any row count)."""
    name = f"kiban-usage-{window.start:%Y%m%dT%H%M}-{window.end:%Y%m%dT%H%M}.csv"
    response = StreamingResponse(
        usage_log.export_csv(request.app.state.engine, window),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
    renewed = getattr(request.state, "renewed_session", None)
    if renewed is not None:  # a returned Response does not get the dependency's cookies
        set_session_cookies(response, request, settings, renewed)
    return response
