"""QuotaAdmission on its own: caps, cost budgets, the last tokens of a period, failures."""

from __future__ import annotations

from decimal import Decimal

import pytest
from redis.asyncio import Redis

from kiban.auth.dependencies import Principal
from kiban.billing.plans import PlanCatalog
from kiban.gateway.admission import AdmissionRequest, Usage
from kiban.models import User
from kiban.quota import QuotaAdmission, QuotaExceeded, QuotaUnavailable
from kiban.quota.store import QuotaStore, RedisQuotaStore, SqlQuotaStore
from tests.quota.conftest import insert_user

# Every token costs 0.1 USD: easy budgets to reason about.
DIME = Decimal("0.1")


@pytest.fixture
def admission(store: QuotaStore, catalog: PlanCatalog) -> QuotaAdmission:
    return QuotaAdmission(
        store, catalog, store.read_sessions, cost_bound=lambda model, p, c: DIME * (p + c)
    )


def ask(
    user: User, prompt: int = 10, max_tokens: int | None = None, model: str = "gpt-4o"
) -> AdmissionRequest:
    return AdmissionRequest(
        principal=Principal(user=user),
        endpoint="chat_completions",
        model=model,
        prompt_tokens=prompt,
        max_completion_tokens=max_tokens,
    )


async def test_completion_cap_is_the_plans_when_none_or_more_is_asked(
    admission: QuotaAdmission, quota_user: User
) -> None:
    free_default = await admission.admit(ask(quota_user, model="extractive"))
    assert free_default.max_completion_tokens == 50
    assert free_default.reserved_tokens == 60
    asked_more = await admission.admit(ask(quota_user, max_tokens=5_000, model="extractive"))
    assert asked_more.max_completion_tokens == 50
    asked_less = await admission.admit(ask(quota_user, max_tokens=7, model="extractive"))
    assert (asked_less.max_completion_tokens, asked_less.reserved_tokens) == (7, 17)


async def test_last_tokens_of_the_period_are_given_not_refused(
    admission: QuotaAdmission, quota_user: User
) -> None:
    # 1000 tokens: 15 requests of 60 reserve 900; 100 remain.
    for _ in range(15):
        await admission.admit(ask(quota_user, model="extractive"))
    # No max_tokens asked: the completion is capped at what is left (100 - 10 = 90 > 50: full).
    full = await admission.admit(ask(quota_user, model="extractive"))
    assert full.max_completion_tokens == 50
    # 40 left: a request without max_tokens gets 30 completion tokens...
    shrunk = await admission.admit(ask(quota_user, model="extractive"))
    assert (shrunk.max_completion_tokens, shrunk.reserved_tokens) == (30, 40)
    # ...and one that asked for a number is refused rather than silently cut.
    with pytest.raises(QuotaExceeded):
        await admission.admit(ask(quota_user, max_tokens=5, model="extractive"))


async def test_cost_budget_refuses_what_could_overspend(
    admission: QuotaAdmission, database_url: str
) -> None:
    pro = await insert_user(database_url, plan="pro")  # budget 2.5 USD = 25 tokens at 0.1
    first = await admission.admit(ask(pro, prompt=10, max_tokens=10))  # up to 2.0 USD
    with pytest.raises(QuotaExceeded) as refused:
        await admission.admit(ask(pro, prompt=1, max_tokens=5))  # up to 0.6 more
    body = refused.value.body()
    assert body["quota"] == "cost_usd"
    assert body["limit"] == "2.5"
    # Settled at its real cost (0.5 USD), the first request leaves room for the second.
    await admission.settle(first, Usage(3, 2, Decimal("0.5")))
    second = await admission.admit(ask(pro, prompt=1, max_tokens=5))
    assert second.plan == "pro"


async def test_settle_is_applied_once(admission: QuotaAdmission, quota_user: User) -> None:
    ticket = await admission.admit(ask(quota_user, model="extractive"))
    await admission.settle(ticket, Usage(10, 5, None))
    await admission.settle(ticket, Usage(10, 5, None))
    period = (await admission.entitlement(quota_user, ticket.state.reservation.now)).period_start
    state = await admission.store.state(quota_user.id, period)
    assert (state.used_tokens, state.reserved_tokens) == (15, 0)


async def test_unreachable_store_fails_closed_with_503(
    catalog: PlanCatalog, quota_user: User, database_url: str
) -> None:
    database = SqlQuotaStore.from_url(database_url)
    dead = RedisQuotaStore(Redis.from_url("redis://127.0.0.1:1/0"), database)  # nothing listens
    admission = QuotaAdmission(dead, catalog, dead.read_sessions)
    try:
        with pytest.raises(QuotaUnavailable) as refused:
            await admission.admit(ask(quota_user, model="extractive"))
        assert refused.value.status_code == 503
        assert refused.value.headers["Retry-After"] == "5"
    finally:
        await dead.close()
