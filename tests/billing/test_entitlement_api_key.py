"""The API-key path skips billing's subscription query when it cannot matter; these pin that a
subscription bought changes the plan within the API-key cache's bound (1 s), and one that ends
does on the very next request with the key (the cache keeps the period's end, not a verdict)."""

from __future__ import annotations

from datetime import timedelta

import httpx
from fastapi import FastAPI

from kiban.auth.api_keys import create_api_key
from kiban.core import clock
from kiban.core.db import session_scope
from kiban.models import User
from tests.auth.conftest import within_the_bound
from tests.billing.conftest import post_event, subscription_event

# The default model (no upstream is configured here): what matters is the admission's headers.
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}


async def quota_limit(client: httpx.AsyncClient, key: str) -> str:
    response = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    return response.headers["X-Quota-Limit"]


async def test_a_subscription_changes_the_plan_on_the_next_api_key_request(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    async with session_scope(app.state.sessionmaker) as session:
        key = (await create_api_key(session, user, "ci")).plaintext
    assert await quota_limit(client, key) == "100000"  # free: the shipped plans file

    end = clock.now() + timedelta(days=30)
    created = subscription_event(
        "customer.subscription.created",
        subscription_id="sub_1",
        customer_id="cus_1",
        status="active",
        created=int(clock.timestamp()),
        period_end=end,
        user_id=str(user.id),
    )
    assert (await post_event(client, created)).json()["outcome"] == "applied"

    async def pro() -> bool:
        return await quota_limit(client, key) == "5000000"

    await within_the_bound(pro)

    with clock.shifted(timedelta(days=31)):  # the period is over and nothing renewed it
        assert await quota_limit(client, key) == "100000"
