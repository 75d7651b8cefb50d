"""A storm: hundreds of events for many users, a third duplicated, shuffled, posted concurrently.

Every user must end in the state the newest event describes, and the inbox must hold each event
exactly once, on SQLite and PostgreSQL; two app instances (two engines, as two processes would
have) receiving the same events at once must apply each one once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.app import create_app
from kiban.billing import simulate
from kiban.core import clock
from kiban.models.billing import BillingSubscription, WebhookEvent
from kiban.settings import Settings
from tests.billing.conftest import PRO_PRICE, WEBHOOK_SECRET, post_event, subscription_event
from tests.conftest import RunningApp, create_user, make_client

USERS = 30
EVENTS_PER_USER = 10


@dataclass(frozen=True)
class Expected:
    status: str
    cancel_at_period_end: bool
    period_end: int


def _storm(
    rng: random.Random, users: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Expected]]:
    """Events per user with strictly increasing ``created``; the newest is a subscription event."""
    base = int(clock.timestamp()) - 3600
    events: list[dict[str, Any]] = []
    expected: dict[str, Expected] = {}
    for n, user_id in enumerate(users):
        sub_id, customer_id = f"sub_storm_{n}", f"cus_storm_{n}"
        for i in range(EVENTS_PER_USER):
            created = base + i * 10 + rng.randint(0, 5)
            end = clock.now() + timedelta(days=rng.randint(5, 40))
            last = i == EVENTS_PER_USER - 1
            kind = rng.random()
            if not last and kind < 0.25:
                obj = simulate.invoice_object(
                    customer_id=customer_id,
                    subscription_id=sub_id,
                    price_id=PRO_PRICE,
                    paid=kind < 0.12,
                    period_start=end - timedelta(days=30),
                    period_end=end,
                )
                event_type = "invoice.paid" if kind < 0.12 else "invoice.payment_failed"
                events.append(simulate.event(event_type, obj, created=created))
                continue
            if last and kind < 0.15:
                event_type, status = "customer.subscription.deleted", "canceled"
            else:
                event_type = (
                    "customer.subscription.created" if i == 0 else "customer.subscription.updated"
                )
                status = rng.choice(["active", "active", "trialing", "past_due", "unpaid"])
            cancel = status in ("active", "trialing") and rng.random() < 0.3
            events.append(
                subscription_event(
                    event_type,
                    subscription_id=sub_id,
                    customer_id=customer_id,
                    status=status,
                    created=created,
                    period_end=end,
                    user_id=user_id,
                    cancel_at_period_end=cancel,
                )
            )
            if last:
                expected[sub_id] = Expected(status, cancel, int(end.timestamp()))
    return events, expected


async def _post_all(
    clients: list[httpx.AsyncClient], deliveries: list[dict[str, Any]], concurrency: int = 24
) -> list[httpx.Response]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, event: dict[str, Any]) -> httpx.Response:
        async with gate:
            return await post_event(clients[i % len(clients)], event)

    return await asyncio.gather(*(one(i, e) for i, e in enumerate(deliveries)))


async def _check(
    session: AsyncSession, events: list[dict[str, Any]], expected: dict[str, Expected]
) -> None:
    inbox = (await session.scalars(select(WebhookEvent.stripe_event_id))).all()
    assert sorted(inbox) == sorted(e["id"] for e in events)  # each event once, none lost
    unprocessed = await session.scalar(
        select(func.count()).select_from(WebhookEvent).where(WebhookEvent.outcome.is_(None))
    )
    assert unprocessed == 0
    rows = {
        r.stripe_subscription_id: r
        for r in (await session.scalars(select(BillingSubscription))).all()
    }
    assert set(rows) == set(expected)
    wrong = {
        sub_id: (row.stripe_status, row.cancel_at_period_end, row.current_period_end)
        for sub_id, row in rows.items()
        if (
            row.stripe_status,
            row.cancel_at_period_end,
            int(row.current_period_end.timestamp()) if row.current_period_end else None,
        )
        != (
            expected[sub_id].status,
            expected[sub_id].cancel_at_period_end,
            expected[sub_id].period_end,
        )
    }
    assert wrong == {}, f"{len(wrong)} subscriptions not in their newest state: {wrong}"


async def test_storm_of_shuffled_duplicated_concurrent_events(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    rng = random.Random(20261127)
    users = [str((await create_user(session)).id) for _ in range(USERS)]
    events, expected = _storm(rng, users)
    deliveries = events + rng.sample(events, len(events) // 3)
    rng.shuffle(deliveries)

    responses = await _post_all([client], deliveries)

    assert [r.status_code for r in responses] == [200] * len(deliveries)
    fresh = sum(1 for r in responses if not r.json()["duplicate"])
    assert fresh == len(events)
    await _check(session, events, expected)


async def test_two_instances_receive_the_same_events_at_once(
    make_settings: Callable[..., Settings], plans_file: object, session: AsyncSession
) -> None:
    rng = random.Random(7)
    users = [str((await create_user(session)).id) for _ in range(8)]
    events, expected = _storm(rng, users)
    # Every event delivered to both instances, interleaved so the copies race each other.
    deliveries = [e for event in events for e in (event, event)]
    settings = make_settings(stripe_webhook_secret=WEBHOOK_SECRET, plans_file=plans_file)
    async with (
        RunningApp(create_app(settings)) as first,
        RunningApp(create_app(settings)) as second,
        make_client(first) as a,
        make_client(second) as b,
    ):
        responses = await _post_all([a, b], deliveries)
    assert [r.status_code for r in responses] == [200] * len(deliveries)
    assert sum(1 for r in responses if not r.json()["duplicate"]) == len(events)
    await _check(session, events, expected)
