"""The webhook inbox: exactly-once application, ordering and the subscription state."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.billing import repository as repo
from kiban.billing import simulate
from kiban.billing.reconcile import repair
from kiban.billing.service import grace
from kiban.core import clock
from kiban.core.db import session_scope
from kiban.models import User
from kiban.models.billing import BillingSubscription, WebhookEvent
from tests.billing.conftest import (
    PRO_PRICE,
    customer_event,
    inbox_count,
    post_event,
    subscription_event,
)
from tests.conftest import auth_headers


async def _subscription(session: AsyncSession, sub_id: str) -> BillingSubscription:
    row = await session.scalar(
        select(BillingSubscription)
        .where(BillingSubscription.stripe_subscription_id == sub_id)
        .execution_options(populate_existing=True)
    )
    assert row is not None
    return row


async def test_unhandled_event_is_recorded_and_acknowledged(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    event = customer_event()
    response = await post_event(client, event)
    assert response.status_code == 200
    assert response.json() == {
        "received": True,
        "event_id": event["id"],
        "duplicate": False,
        "outcome": "ignored",
    }
    row = await session.scalar(select(WebhookEvent))
    assert row is not None
    assert row.stripe_event_id == event["id"]
    assert row.type == "customer.created"
    assert row.payload == event


async def test_subscription_created_grants_the_paid_plan(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    end = clock.now() + timedelta(days=30)
    event = subscription_event(
        "customer.subscription.created",
        subscription_id="sub_1",
        customer_id="cus_1",
        status="active",
        created=int(clock.timestamp()),
        period_end=end,
        user_id=str(user.id),
    )
    assert (await post_event(client, event)).json()["outcome"] == "applied"
    body = (await client.get("/billing/subscription", headers=auth_headers(app, user))).json()
    assert body["plan"] == "pro"
    assert body["status"] == "active"
    assert body["cancel_at_period_end"] is False
    assert datetime.fromisoformat(body["current_period_end"]) == end.replace(microsecond=0)


async def test_free_user_has_free_subscription_view(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    body = (await client.get("/billing/subscription", headers=auth_headers(app, user))).json()
    assert body == {
        "plan": "free",
        "status": "free",
        "current_period_end": None,
        "cancel_at_period_end": False,
    }


async def test_duplicate_delivery_is_acknowledged_and_changes_nothing(
    client: httpx.AsyncClient, session: AsyncSession, user: User
) -> None:
    now = int(clock.timestamp())
    created = subscription_event(
        "customer.subscription.updated",
        subscription_id="sub_dup",
        customer_id="cus_dup",
        status="active",
        created=now - 10,
        period_end=clock.now() + timedelta(days=30),
        user_id=str(user.id),
    )
    canceled = subscription_event(
        "customer.subscription.updated",
        subscription_id="sub_dup",
        customer_id="cus_dup",
        status="active",
        cancel_at_period_end=True,
        created=now,
        period_end=clock.now() + timedelta(days=30),
        user_id=str(user.id),
    )
    await post_event(client, created)
    await post_event(client, canceled)
    again = await post_event(client, created)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["outcome"] is None
    row = await _subscription(session, "sub_dup")
    assert row.cancel_at_period_end is True
    assert row.last_event_id == canceled["id"]
    assert await inbox_count(session) == 2


async def test_concurrent_copies_of_one_event_apply_once(
    client: httpx.AsyncClient, session: AsyncSession, user: User
) -> None:
    event = subscription_event(
        "customer.subscription.created",
        subscription_id="sub_conc",
        customer_id="cus_conc",
        status="active",
        created=int(clock.timestamp()),
        period_end=clock.now() + timedelta(days=30),
        user_id=str(user.id),
    )
    responses = await asyncio.gather(*(post_event(client, event) for _ in range(12)))
    assert [r.status_code for r in responses] == [200] * 12
    assert sum(1 for r in responses if not r.json()["duplicate"]) == 1
    assert await inbox_count(session) == 1


async def test_older_event_never_overwrites_newer_state(
    client: httpx.AsyncClient, session: AsyncSession, user: User
) -> None:
    now = int(clock.timestamp())
    end = clock.now() + timedelta(days=30)
    common = {"subscription_id": "sub_ord", "customer_id": "cus_ord", "user_id": str(user.id)}
    deleted = subscription_event(
        "customer.subscription.deleted", status="canceled", created=now, period_end=end, **common
    )
    older = subscription_event(
        "customer.subscription.updated", status="active", created=now - 60, period_end=end, **common
    )
    await post_event(client, deleted)
    response = await post_event(client, older)
    # Folded in its place in Stripe's order: before the deletion, which still decides.
    assert response.json()["outcome"] == "applied"
    row = await _subscription(session, "sub_ord")
    assert row.stripe_status == "canceled"
    assert row.state == "expired"


async def test_renewal_delivered_after_its_invoice_still_moves_the_period(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, user: User
) -> None:
    now = int(clock.timestamp())
    first_end = (clock.now() + timedelta(days=1)).replace(microsecond=0)
    renewed_end = first_end + timedelta(days=30)
    common = {"subscription_id": "sub_renew", "customer_id": "cus_renew", "user_id": str(user.id)}
    created = subscription_event(
        "customer.subscription.created",
        status="active",
        created=now - 100,
        period_end=first_end,
        **common,
    )
    renewed = subscription_event(
        "customer.subscription.updated",
        status="active",
        created=now - 50,
        period_end=renewed_end,
        **common,
    )
    paid = simulate.event(
        "invoice.paid",
        simulate.invoice_object(
            customer_id="cus_renew",
            subscription_id="sub_renew",
            price_id=PRO_PRICE,
            paid=True,
            period_start=first_end,
            period_end=renewed_end,
        ),
        created=now - 40,
    )
    # Stripe retried the renewal's subscription event: it arrives after the newer invoice.
    for event in (created, paid, renewed):
        assert (await post_event(client, event)).status_code == 200
    row = await _subscription(session, "sub_renew")
    assert row.current_period_end == renewed_end
    with clock.shifted(timedelta(days=2)):
        body = (await client.get("/billing/subscription", headers=auth_headers(app, user))).json()
    assert (body["status"], body["plan"]) == ("active", "pro")


async def test_same_second_created_does_not_overwrite_a_snapshot(
    client: httpx.AsyncClient, session: AsyncSession, user: User
) -> None:
    now = int(clock.timestamp())
    end = clock.now() + timedelta(days=30)
    common = {"subscription_id": "sub_tie", "customer_id": "cus_tie", "user_id": str(user.id)}
    updated = subscription_event(
        "customer.subscription.updated", status="active", created=now, period_end=end, **common
    )
    created = subscription_event(
        "customer.subscription.created", status="incomplete", created=now, period_end=end, **common
    )
    await post_event(client, updated)
    assert (await post_event(client, created)).json()["outcome"] == "applied"
    assert (await _subscription(session, "sub_tie")).stripe_status == "active"


async def test_period_end_is_read_from_items_then_from_the_subscription(
    client: httpx.AsyncClient, session: AsyncSession, user: User
) -> None:
    end = (clock.now() + timedelta(days=30)).replace(microsecond=0)
    old_style = subscription_event(
        "customer.subscription.created",
        subscription_id="sub_old",
        customer_id="cus_old",
        status="active",
        created=int(clock.timestamp()),
        period_end=end,
        user_id=str(user.id),
    )
    obj = old_style["data"]["object"]  # type: ignore[index]
    item = obj["items"]["data"][0]
    obj["current_period_start"] = item.pop("current_period_start")
    obj["current_period_end"] = item.pop("current_period_end")
    obj["plan"] = {"id": item.pop("price")["id"], "object": "plan"}
    await post_event(client, old_style)
    row = await _subscription(session, "sub_old")
    assert row.current_period_end == end
    assert row.price_id == PRO_PRICE
    assert row.state == "active"


async def test_status_alone_never_grants_access(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    event = subscription_event(
        "customer.subscription.updated",
        subscription_id="sub_past",
        customer_id="cus_past",
        status="active",
        created=int(clock.timestamp()),
        period_end=clock.now() - timedelta(seconds=1),
        user_id=str(user.id),
    )
    await post_event(client, event)
    body = (await client.get("/billing/subscription", headers=auth_headers(app, user))).json()
    assert body["plan"] == "free"
    assert body["status"] == "expired"


async def test_subscription_of_unknown_customer_is_linked_by_checkout(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, user: User
) -> None:
    now = int(clock.timestamp())
    created = subscription_event(
        "customer.subscription.created",
        subscription_id="sub_link",
        customer_id="cus_link",
        status="active",
        created=now,
        period_end=clock.now() + timedelta(days=30),
    )
    assert (await post_event(client, created)).json()["outcome"] == "unmatched"
    headers = auth_headers(app, user)
    assert (await client.get("/billing/subscription", headers=headers)).json()["plan"] == "free"
    completed = simulate.event(
        "checkout.session.completed",
        simulate.checkout_session_object(
            customer_id="cus_link", subscription_id="sub_link", user_id=str(user.id), plan="pro"
        ),
        created=now - 5,  # older than the subscription event, and still applied
    )
    assert (await post_event(client, completed)).json()["outcome"] == "applied"
    assert (await client.get("/billing/subscription", headers=headers)).json()["plan"] == "pro"
    row = await _subscription(session, "sub_link")
    assert row.user_id == user.id
    assert row.last_event_id == created["id"]


async def test_invoice_events_move_between_pro_and_past_due(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, user: User
) -> None:
    now = int(clock.timestamp())
    start, end = clock.now(), clock.now() + timedelta(days=30)
    common = {"subscription_id": "sub_inv", "customer_id": "cus_inv", "user_id": str(user.id)}
    await post_event(
        client,
        subscription_event(
            "customer.subscription.created",
            status="active",
            created=now - 100,
            period_end=end,
            **common,
        ),
    )

    def invoice(event_type: str, paid: bool, created: int) -> dict[str, object]:
        obj = simulate.invoice_object(
            customer_id="cus_inv",
            subscription_id="sub_inv",
            price_id=PRO_PRICE,
            paid=paid,
            period_start=start,
            period_end=end,
        )
        return simulate.event(event_type, obj, created=created)

    headers = auth_headers(app, user)
    await post_event(client, invoice("invoice.payment_failed", False, now - 50))
    body = (await client.get("/billing/subscription", headers=headers)).json()
    assert body["status"] == "past_due"
    assert body["plan"] == "pro"
    await post_event(client, invoice("invoice.paid", True, now))
    body = (await client.get("/billing/subscription", headers=headers)).json()
    assert body["status"] == "active"
    assert body["plan"] == "pro"
    row = await _subscription(session, "sub_inv")
    assert row.past_due_since is None


async def test_past_due_access_ends_after_the_grace_period(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    now = int(clock.timestamp())
    event = subscription_event(
        "customer.subscription.updated",
        subscription_id="sub_grace",
        customer_id="cus_grace",
        status="past_due",
        created=now,
        period_end=clock.now() + timedelta(days=30),
        user_id=str(user.id),
    )
    await post_event(client, event)
    headers = auth_headers(app, user)
    with clock.shifted(timedelta(days=6)):
        body = (await client.get("/billing/subscription", headers=auth_headers(app, user))).json()
        assert body["plan"] == "pro"
        assert body["status"] == "past_due"
    with clock.shifted(timedelta(days=7, seconds=1)):
        body = (await client.get("/billing/subscription", headers=auth_headers(app, user))).json()
        assert body["plan"] == "free"
        assert body["status"] == "expired"
    assert headers


async def test_checkout_return_pages(client: httpx.AsyncClient) -> None:
    success = await client.get("/billing/success", params={"session_id": "cs_test_1"})
    assert success.status_code == 200
    assert success.json()["session_id"] == "cs_test_1"
    cancel = await client.get("/billing/cancel")
    assert cancel.json()["status"] == "canceled"


async def test_paused_subscription_loses_access(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    now = int(clock.timestamp())
    end = clock.now() + timedelta(days=30)
    common = {"subscription_id": "sub_pause", "customer_id": "cus_pause", "user_id": str(user.id)}
    await post_event(
        client,
        subscription_event(
            "customer.subscription.created",
            status="active",
            created=now - 5,
            period_end=end,
            **common,
        ),
    )
    paused = subscription_event(
        "customer.subscription.paused", status="paused", created=now, period_end=end, **common
    )
    assert (await post_event(client, paused)).json()["outcome"] == "applied"
    body = (await client.get("/billing/subscription", headers=auth_headers(app, user))).json()
    assert body["plan"] == "free"
    assert body["status"] == "expired"


async def test_reconcile_leaves_a_subscription_that_a_newer_webhook_just_changed(
    client: httpx.AsyncClient, app: FastAPI, user: User
) -> None:
    # Reconcile read the subscription (active, renewing) at `read_at`; before it repaired the
    # row, a webhook created later said "cancel at period end". The older read must not win.
    read_at = int(clock.timestamp())
    period_end = clock.now() + timedelta(days=20)
    newer = subscription_event(
        "customer.subscription.updated",
        subscription_id="sub_race",
        customer_id="cus_race",
        status="active",
        created=read_at + 5,
        period_end=period_end,
        user_id=str(user.id),
        cancel_at_period_end=True,
    )
    assert (await post_event(client, newer)).status_code == 200
    stale_read = simulate.subscription_object(
        subscription_id="sub_race",
        customer_id="cus_race",
        price_id=PRO_PRICE,
        status="active",
        period_start=period_end - timedelta(days=30),
        period_end=period_end,
        cancel_at_period_end=False,
        user_id=str(user.id),
    )
    async with session_scope(app.state.sessionmaker) as session:
        assert await repair(session, stale_read, read_at, grace(app.state.settings)) is None
        # In the event's own second the order is unknown: the event wins too.
        assert await repair(session, stale_read, read_at + 5, grace(app.state.settings)) is None
    async with session_scope(app.state.sessionmaker) as session:
        row = await repo.lock_subscription(session, "sub_race")
        assert row.cancel_at_period_end is True
        # A read made after that event does repair the row.
        change = await repair(session, stale_read, read_at + 6, grace(app.state.settings))
    assert change is not None
    assert change.fields["cancel_at_period_end"] == (True, False)
