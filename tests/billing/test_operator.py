"""Billing for operators: /admin/billing lists subscriptions and the inbox, re-applies events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.billing import repository as repo
from kiban.billing import simulate
from kiban.billing.inbox import reapply_waiting
from kiban.billing.service import grace
from kiban.core import clock
from kiban.models import User
from tests.billing.conftest import PRO_PRICE, post_event, subscription_event
from tests.conftest import auth_headers


def _broken_subscription_event(sub_id: str, created: int) -> dict[str, Any]:
    # Signed and well-formed, but its period end is no date (year out of range).
    event = subscription_event(
        "customer.subscription.updated",
        subscription_id=sub_id,
        customer_id="cus_broken",
        status="active",
        created=created,
        period_end=clock.now() + timedelta(days=30),
    )
    event["data"]["object"]["items"]["data"][0]["current_period_end"] = 10**15
    return event


async def test_subscriptions_list_user_plan_state_and_stripe_ids(
    app: FastAPI, client: httpx.AsyncClient, admin: User, user: User
) -> None:
    end = (clock.now() + timedelta(days=12)).replace(microsecond=0)
    event = subscription_event(
        "customer.subscription.created",
        subscription_id="sub_op",
        customer_id="cus_op",
        status="trialing",
        created=int(clock.timestamp()),
        period_end=end,
        user_id=str(user.id),
    )
    await post_event(client, event)
    response = await client.get("/admin/billing/subscriptions", headers=auth_headers(app, admin))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == 1
    (row,) = body["items"]
    assert row["stripe_subscription_id"] == "sub_op"
    assert row["stripe_customer_id"] == "cus_op"
    assert (row["user_id"], row["email"]) == (str(user.id), user.email)
    assert (row["plan"], row["status"], row["paid_access"]) == ("pro", "trialing", True)
    assert row["current_period_end"].startswith(end.strftime("%Y-%m-%dT%H:%M:%S"))
    assert row["last_event_id"] == event["id"]
    denied = await client.get("/admin/billing/subscriptions", headers=auth_headers(app, user))
    assert denied.status_code == 403


async def test_inbox_filters_by_outcome_and_refuses_an_unknown_one(
    app: FastAPI, client: httpx.AsyncClient, admin: User
) -> None:
    now = int(clock.timestamp())
    pending = simulate.event(
        "invoice.paid",
        simulate.invoice_object(
            customer_id="cus_x",
            subscription_id="sub_x",
            price_id=PRO_PRICE,
            paid=True,
            period_start=clock.now(),
            period_end=clock.now() + timedelta(days=30),
        ),
        created=now,
    )
    unmatched = subscription_event(
        "customer.subscription.created",
        subscription_id="sub_nobody",
        customer_id="cus_nobody",
        status="active",
        created=now,
        period_end=clock.now() + timedelta(days=30),
    )
    ignored = simulate.event("customer.created", {"id": "cus_y", "object": "customer"}, created=now)
    for event in (pending, unmatched, ignored):
        await post_event(client, event)
    headers = auth_headers(app, admin)
    page = (await client.get("/admin/billing/events", headers=headers)).json()
    assert [e["stripe_event_id"] for e in page["items"]] == [
        ignored["id"],
        unmatched["id"],
        pending["id"],
    ]
    assert page["counts"] == {"applied": 0, "ignored": 1, "pending": 1, "unmatched": 1, "failed": 0}
    waiting = await client.get(
        "/admin/billing/events", params={"outcome": ["pending", "unmatched"]}, headers=headers
    )
    assert {e["outcome"] for e in waiting.json()["items"]} == {"pending", "unmatched"}
    assert waiting.json()["items"][0]["detail"] == "no user is known for customer cus_nobody"
    bad = await client.get("/admin/billing/events", params={"outcome": "stale"}, headers=headers)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "unknown_outcome"
    one = await client.get(f"/admin/billing/events/{pending['id']}", headers=headers)
    assert one.json()["payload"] == pending
    missing = await client.get("/admin/billing/events/evt_nope", headers=headers)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "unknown_event")


async def test_unmatched_event_is_reapplied_once_its_user_is_known(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, admin: User, user: User
) -> None:
    event = subscription_event(
        "customer.subscription.created",
        subscription_id="sub_later",
        customer_id="cus_later",
        status="active",
        created=int(clock.timestamp()),
        period_end=clock.now() + timedelta(days=30),
    )
    assert (await post_event(client, event)).json()["outcome"] == "unmatched"
    # The user started Checkout with this customer (what POST /billing/checkout records).
    await repo.link_customer(session, user.id, "cus_later")
    await session.commit()
    response = await client.post(
        f"/admin/billing/events/{event['id']}/reapply", headers=auth_headers(app, admin)
    )
    assert response.json() == {"event_id": event["id"], "outcome": "applied", "detail": None}
    view = await client.get("/billing/subscription", headers=auth_headers(app, user))
    assert (view.json()["plan"], view.json()["status"]) == ("pro", "active")


async def test_an_unreadable_event_fails_alone_and_is_kept_for_an_operator(
    app: FastAPI, client: httpx.AsyncClient, admin: User, user: User
) -> None:
    now = int(clock.timestamp())
    broken = _broken_subscription_event("sub_broken", now - 10)
    response = await post_event(client, broken)
    assert (response.status_code, response.json()["outcome"]) == (200, "failed")
    # The subscription's later events still apply.
    later = subscription_event(
        "customer.subscription.updated",
        subscription_id="sub_broken",
        customer_id="cus_broken",
        status="active",
        created=now,
        period_end=clock.now() + timedelta(days=30),
        user_id=str(user.id),
    )
    assert (await post_event(client, later)).json()["outcome"] == "applied"
    headers = auth_headers(app, admin)
    failed = (
        await client.get("/admin/billing/events", params={"outcome": "failed"}, headers=headers)
    ).json()
    assert [e["stripe_event_id"] for e in failed["items"]] == [broken["id"]]
    assert "out of range" in failed["items"][0]["detail"]
    # Stripe's redelivery of a failed event applies it again (and fails again, visibly).
    redelivered = await post_event(client, broken)
    assert redelivered.json() == {
        "received": True,
        "event_id": broken["id"],
        "duplicate": False,
        "outcome": "failed",
    }
    again = await client.post(f"/admin/billing/events/{broken['id']}/reapply", headers=headers)
    assert again.json()["outcome"] == "failed"
    view = await client.get("/billing/subscription", headers=auth_headers(app, user))
    assert view.json()["status"] == "active"


async def test_reconcile_applies_again_what_waits(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, user: User
) -> None:
    now = int(clock.timestamp())
    waiting = subscription_event(
        "customer.subscription.created",
        subscription_id="sub_wait",
        customer_id="cus_wait",
        status="active",
        created=now,
        period_end=clock.now() + timedelta(days=30),
    )
    assert (await post_event(client, waiting)).json()["outcome"] == "unmatched"
    await repo.link_customer(session, user.id, "cus_wait")
    await session.commit()
    moved = await reapply_waiting(app.state.sessionmaker, grace(app.state.settings))
    assert moved == [(waiting["id"], "unmatched", "applied")]
    assert await reapply_waiting(app.state.sessionmaker, grace(app.state.settings)) == []
