"""Quota consumption per plan with subscribers, whose quota period is their billing period."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.admin import quotas
from kiban.models.billing import BillingSubscription
from kiban.settings import Settings
from tests.billing.conftest import PRO_PRICE, write_plans_file
from tests.conftest import create_user
from tests.factories import spend

GRACE = timedelta(days=7)

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    return make_settings(plans_file=write_plans_file(tmp_path))


async def _subscribe(session: AsyncSession, user_id: object, start: datetime, n: int) -> None:
    session.add(
        BillingSubscription(
            stripe_subscription_id=f"sub_{n}",
            user_id=user_id,
            stripe_customer_id=f"cus_{n}",
            price_id=PRO_PRICE,
            stripe_status="active",
            state="pro",
            current_period_start=start,
            current_period_end=start + timedelta(days=30),
        )
    )
    await session.commit()


async def test_a_subscribers_usage_counts_from_their_billing_period(
    app: FastAPI, session: AsyncSession
) -> None:
    pro_tokens = app.state.plans.plans["pro"].monthly_tokens
    free_tokens = app.state.plans.plans["free"].monthly_tokens
    # Two subscribers with different periods, each with usage before and inside it.
    starts = [NOW - timedelta(days=10, hours=5), NOW - timedelta(days=2, minutes=7)]
    subscribers = [await create_user(session) for _ in starts]
    for n, (user, start) in enumerate(zip(subscribers, starts, strict=True)):
        await _subscribe(session, user.id, start, n)
        await spend(session, user, pro_tokens, start - timedelta(minutes=1))  # last period's
        await spend(session, user, 1_000 * (n + 1), start + timedelta(minutes=1))
    # A free user (calendar month), near the limit.
    free = await create_user(session)
    await spend(session, free, int(free_tokens * 0.9), NOW - timedelta(days=1))
    got = {
        p.plan: p
        for p in (await quotas.quota_consumption(session, NOW, app.state.plans, GRACE)).plans
    }
    assert got["pro"].users_with_usage == 2
    assert got["pro"].tokens_used == 3_000
    assert got["pro"].near_limit == 0
    assert got["free"].users_with_usage == 1
    assert got["free"].near_limit == 1


async def test_ids_are_sent_in_chunks(
    app: FastAPI, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # More users than one IN list holds (a small chunk here stands in for PostgreSQL's limit
    # of 32,767 parameters per statement): every user is still counted once.
    monkeypatch.setattr(quotas, "CHUNK", 3)
    users = [await create_user(session) for _ in range(8)]
    for i, user in enumerate(users):
        await spend(session, user, 100 + i, NOW - timedelta(hours=i + 1))
    got = {
        p.plan: p
        for p in (await quotas.quota_consumption(session, NOW, app.state.plans, GRACE)).plans
    }
    assert got["free"].users_with_usage == 8
    assert got["free"].tokens_used == sum(100 + i for i in range(8))
