"""Usage reports; admin changes to plans and extra tokens; API key limits."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from kiban.billing import resolve_entitlement
from kiban.core import clock
from kiban.models import ApiKey, ApiKeyLimit, User
from kiban.quota.admission import QuotaAdmission
from kiban.quota.exceptions import UnknownPlan
from kiban.quota.limits import seconds_until, token_limit, window_reset
from kiban.quota.schemas import (
    CostOut,
    KeyLimitsIn,
    KeyLimitsOut,
    PeriodOut,
    PlanOut,
    RateLimitOut,
    TokensOut,
    UsageReport,
)
from kiban.quota.store.base import WINDOW_SECONDS, nanos_to_usd
from kiban.quota.store.sql_statements import grant_in_session


async def usage_report(
    admission: QuotaAdmission, session: AsyncSession, user: User, now: datetime
) -> UsageReport:
    """Plan, period, tokens and cost used and reserved, and rate-limit state of one user."""
    entitlement = await resolve_entitlement(
        session, user, now, catalog=admission.catalog, grace=admission.grace
    )
    plan = entitlement.plan
    state = await admission.store.state(user.id, entitlement.period_start)
    limit = token_limit(plan, state)
    window = int(now.timestamp() // WINDOW_SECONDS)
    used_usd = nanos_to_usd(state.used_cost_nanos)
    reserved_usd = nanos_to_usd(state.reserved_cost_nanos)
    budget = plan.monthly_cost_usd
    return UsageReport(
        user_id=user.id,
        plan=PlanOut(
            name=plan.name,
            display_name=plan.label,
            monthly_tokens=plan.monthly_tokens,
            monthly_cost_usd=budget,
            requests_per_minute=plan.requests_per_minute,
            tokens_per_minute=plan.tokens_per_minute,
            models=list(plan.models),
            max_tokens=plan.max_tokens,
            max_prompt_tokens=plan.max_prompt_tokens,
            documents=plan.documents,
        ),
        period=PeriodOut(
            start=entitlement.period_start,
            end=entitlement.period_end,
            resets_in_seconds=seconds_until(entitlement.period_end, now),
            source=entitlement.source,
        ),
        tokens=TokensOut(
            limit=limit,
            plan_allowance=plan.monthly_tokens,
            extra=state.extra_tokens,
            used=state.used_tokens,
            reserved=state.reserved_tokens,
            remaining=max(limit - state.used_tokens - state.reserved_tokens, 0),
        ),
        cost=CostOut(
            limit_usd=budget,
            used_usd=used_usd,
            reserved_usd=reserved_usd,
            remaining_usd=None
            if budget is None
            else max(budget - used_usd - reserved_usd, Decimal(0)),
        ),
        rate_limit=RateLimitOut(
            requests_per_minute=plan.requests_per_minute,
            requests_remaining=max(plan.requests_per_minute - state.requests_in(window), 0),
            tokens_per_minute=plan.tokens_per_minute,
            tokens_remaining=(
                None
                if plan.tokens_per_minute is None
                else max(plan.tokens_per_minute - state.tokens_in(window), 0)
            ),
            resets_in_seconds=window_reset(now),
        ),
    )


def set_plan(admission: QuotaAdmission, user: User, plan: str | None) -> None:
    """Set the plan an admin chose (None: back to the default plan); the caller flushes."""
    if plan is not None and plan not in admission.catalog.plans:
        raise UnknownPlan(
            f"There is no plan {plan!r}.",
            hint=f"Plans: {', '.join(sorted(admission.catalog.plans))}.",
            extra={"plans": sorted(admission.catalog.plans)},
        )
    user.plan = plan


async def grant_extra_tokens(
    admission: QuotaAdmission, session: AsyncSession, user: User, extra: int, now: datetime
) -> None:
    """Give the user ``extra`` tokens on top of the plan for the current period (replaces).

    Written in the request's own transaction: on SQLite a second connection writing while the
    request holds its snapshot would deadlock the two.
    """
    entitlement = await resolve_entitlement(
        session, user, now, catalog=admission.catalog, grace=admission.grace
    )
    start, end = entitlement.period_start, entitlement.period_end
    await grant_in_session(session, user.id, start, end, extra)
    await admission.store.extra_tokens_changed(user.id, start, extra)


async def set_key_limits(session: AsyncSession, key: ApiKey, limits: KeyLimitsIn) -> KeyLimitsOut:
    """Set (or, with both null, remove) an API key's own rate limits; the caller commits."""
    row = await session.get(ApiKeyLimit, key.id)
    if limits.requests_per_minute is None and limits.tokens_per_minute is None:
        if row is not None:
            await session.delete(row)
    else:
        if row is None:
            row = ApiKeyLimit(api_key_id=key.id)
            session.add(row)
        row.requests_per_minute = limits.requests_per_minute
        row.tokens_per_minute = limits.tokens_per_minute
        row.updated_at = clock.now()
    await session.flush()
    return KeyLimitsOut(
        api_key_id=key.id,
        requests_per_minute=limits.requests_per_minute,
        tokens_per_minute=limits.tokens_per_minute,
    )


async def key_limits(session: AsyncSession, key: ApiKey) -> KeyLimitsOut:
    """An API key's own rate limits (nulls: none of its own)."""
    row = await session.get(ApiKeyLimit, key.id)
    return KeyLimitsOut(
        api_key_id=key.id,
        requests_per_minute=row.requests_per_minute if row else None,
        tokens_per_minute=row.tokens_per_minute if row else None,
    )
