"""Top users: ties in the ranked figure go to the busier user, in the API and on the dashboard."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.models import UsageRecord, User
from tests.admin.test_dashboard_pages import sign_in
from tests.conftest import create_user
from tests.factories import T0, write_records

# Ragged days: the middle day comes from the per-user rollup, the edges from the ledger.
START, END = T0 + timedelta(hours=6), T0 + timedelta(days=2, hours=6)
TIMES = (T0 + timedelta(hours=12), T0 + timedelta(days=1, hours=3), T0 + timedelta(days=2, hours=2))

# name: (user id, [(tokens, cost) per request]). The ids sort against the expected order, so
# ranking ties by id alone would get every case wrong.
USAGE: dict[str, tuple[int, list[tuple[int, Decimal | None]]]] = {
    "a": (0xFFFF, [(30, Decimal("0.001")), (30, Decimal("0.001")), (40, Decimal("0.001"))]),
    "b": (1, [(300, Decimal("0.0015")), (300, Decimal("0.0015"))]),
    "c": (0, [(250, Decimal("0.0015")), (250, Decimal("0.0015"))]),
    "d": (2, [(100, Decimal("0.006"))]),
    "e": (3, [(50, None)] * 5),  # unpriced: no cost, many requests
}
EXPECTED = {
    "cost": ["d", "a", "b", "c", "e"],  # a, b, c cost the same; a made more requests
    "requests": ["e", "a", "b", "c", "d"],  # b and c made two each; b used more tokens
    "tokens": ["b", "c", "e", "a", "d"],  # a and d used 100 each; a made more requests
}


def _record(user_id: uuid.UUID, at: datetime, tokens: int, cost: Decimal | None) -> UsageRecord:
    return UsageRecord(
        request_id=f"rank-{uuid.uuid4().hex}",
        created_at=at,
        user_id=user_id,
        endpoint="ai_test",
        model="gpt-4o-mini",
        provider="openai",
        status="ok",
        prompt_tokens=tokens,
        completion_tokens=0,
        total_tokens=tokens,
        estimated_cost=cost,
        response_time_ms=100.0,
    )


@pytest.fixture
async def ranked_users(session: AsyncSession) -> dict[uuid.UUID, str]:
    """The users of ``USAGE`` with their requests spread over the rollup and the edges."""
    names, records = {}, []
    for name, (number, requests) in USAGE.items():
        user = await create_user(session, email=f"{name}@example.com", id=uuid.UUID(int=number))
        names[user.id] = name
        for i, (tokens, cost) in enumerate(requests):
            records.append(_record(user.id, TIMES[i % len(TIMES)], tokens, cost))
    await write_records(session, records)
    return names


@pytest.mark.parametrize("by", list(EXPECTED))
async def test_top_users_break_ties_by_requests_then_tokens(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    ranked_users: dict[uuid.UUID, str],
    by: str,
) -> None:
    r = await client.get(
        "/admin/analytics/top-users",
        params={"from": START.isoformat(), "to": END.isoformat(), "by": by},
        headers=admin_headers,
    )
    assert r.status_code == 200, r.text
    assert [ranked_users[uuid.UUID(u["user_id"])] for u in r.json()["users"]] == EXPECTED[by]


async def test_the_dashboards_top_users_rank_by_cost_then_requests(
    client: httpx.AsyncClient, admin: User, ranked_users: dict[uuid.UUID, str]
) -> None:
    await sign_in(client, admin.email)
    page = await client.get("/admin", params={"from": START.isoformat(), "to": END.isoformat()})
    assert page.status_code == 200
    table = re.search(r'data-table="top-users">.*?</table>', page.text, re.S)
    assert table
    ids = re.findall(r'href="/admin/accounts/([0-9a-f-]+)"', table[0])
    assert [ranked_users[uuid.UUID(i)] for i in ids] == EXPECTED["cost"]
