"""A storm: realistic histories of many users, delivered the way Stripe does it.

Each user's history (``histories``) is delivered twice: in order, to a reference user, and as a
storm to another user, with about a third of the events duplicated, everything shuffled, 16
deliveries at once, a batch redelivered late (as after an outage), and forged and replayed
deliveries mixed in. Every storm user must read, through ``GET /billing/subscription`` and
``GET /me/usage``, exactly what their reference reads; no delivery may get a 5xx, and the inbox
must hold each event once, applied once. On SQLite and PostgreSQL, and with two app instances
(two engines, as two processes would have) receiving the same events at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.app import create_app
from kiban.core import clock
from kiban.models import User
from kiban.models.billing import WebhookEvent
from kiban.settings import Settings
from tests.billing import histories
from tests.billing.conftest import WEBHOOK_SECRET, post_event, sign, write_team_plans_file
from tests.billing.test_ordering import _usage_shape
from tests.conftest import RunningApp, auth_headers, create_user, make_client

USERS = 32


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    return write_team_plans_file(tmp_path)


async def _post_all(
    clients: list[httpx.AsyncClient], deliveries: list[dict[str, Any]], concurrency: int = 16
) -> list[httpx.Response]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, event: dict[str, Any]) -> httpx.Response:
        async with gate:
            return await post_event(clients[i % len(clients)], event)

    return await asyncio.gather(*(one(i, e) for i, e in enumerate(deliveries)))


async def _reads(app: FastAPI, client: httpx.AsyncClient, user: User) -> tuple[Any, Any]:
    headers = auth_headers(app, user)
    view = await client.get("/billing/subscription", headers=headers)
    usage = await client.get("/me/usage", headers=headers)
    assert (view.status_code, usage.status_code) == (200, 200)
    return view.json(), _usage_shape(usage.json())


async def _pairs(
    session: AsyncSession, seeds: list[int]
) -> list[tuple[User, User, histories.History, histories.History]]:
    """For each seed: a reference user and a storm user, with the same history each."""
    now = clock.now()
    pairs = []
    for seed in seeds:
        reference, stormed = await create_user(session), await create_user(session)
        pairs.append(
            (
                reference,
                stormed,
                histories.build(seed, user_id=str(reference.id), tag=reference.id.hex, now=now),
                histories.build(seed, user_id=str(stormed.id), tag=stormed.id.hex, now=now),
            )
        )
    return pairs


async def _check_inbox(session: AsyncSession, events: list[dict[str, Any]]) -> None:
    inbox = (await session.scalars(select(WebhookEvent.stripe_event_id))).all()
    assert sorted(inbox) == sorted(e["id"] for e in events)  # each event once, none lost
    outcomes = dict(
        (
            await session.execute(
                select(WebhookEvent.outcome, func.count()).group_by(WebhookEvent.outcome)
            )
        ).all()
    )
    # Every event applied (or ignored with a reason): none left waiting, failed or unprocessed.
    assert set(outcomes) <= {"applied", "ignored"}, outcomes


async def test_storm_reads_as_in_order_delivery(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    rng = random.Random(20261204)
    pairs = await _pairs(session, [rng.randrange(2**32) for _ in range(USERS)])
    for _, _, reference, _ in pairs:
        for event in reference.events:
            assert (await post_event(client, event)).status_code == 200

    storm = [e for _, _, _, history in pairs for e in history.events]
    deliveries = histories.realistic_duplicates(rng, storm)
    late = rng.sample(storm, len(storm) // 10)  # redelivered after an "outage"
    body = orjson.dumps(storm[0])
    forged = {"Stripe-Signature": sign(body, secret="whsec_not_ours")}
    replayed = {"Stripe-Signature": sign(body, timestamp=int(clock.timestamp()) - 3600)}

    async def refused(headers: dict[str, str]) -> httpx.Response:
        return await client.post("/billing/webhook", content=body, headers=headers)

    responses, bad = await asyncio.gather(
        _post_all([client], deliveries),
        asyncio.gather(*(refused(h) for h in [forged, replayed] * 5)),
    )
    responses += await _post_all([client], late)

    assert [r.status_code for r in responses if r.status_code != 200] == []
    assert sum(1 for r in responses if not r.json()["duplicate"]) == len(storm)
    assert {(r.status_code, r.json()["error"]["code"]) for r in bad} == {
        (400, "signature_invalid"),
        (400, "signature_expired"),
    }
    for reference_user, storm_user, _, _ in pairs:
        assert await _reads(app, client, storm_user) == await _reads(app, client, reference_user)
    await _check_inbox(session, [e for _, _, a, b in pairs for e in a.events + b.events])
    statuses = {(await _reads(app, client, user))[0]["status"] for _, user, _, _ in pairs}
    assert len(statuses) >= 3, statuses  # the storm covered more than one kind of ending


async def test_two_instances_receive_the_same_events_at_once(
    make_settings: Callable[..., Settings], plans_file: Path, session: AsyncSession
) -> None:
    rng = random.Random(7)
    pairs = await _pairs(session, [rng.randrange(2**32) for _ in range(8)])
    settings = make_settings(stripe_webhook_secret=WEBHOOK_SECRET, plans_file=plans_file)
    async with (
        RunningApp(create_app(settings)) as first,
        RunningApp(create_app(settings)) as second,
        make_client(first) as a,
        make_client(second) as b,
    ):
        for _, _, reference, _ in pairs:
            for event in reference.events:
                assert (await post_event(a, event)).status_code == 200
        storm = [e for _, _, _, history in pairs for e in history.events]
        rng.shuffle(storm)
        # Every event delivered to both instances, interleaved so the copies race each other.
        responses = await _post_all([a, b], [e for event in storm for e in (event, event)])
        assert [r.status_code for r in responses] == [200] * len(responses)
        assert sum(1 for r in responses if not r.json()["duplicate"]) == len(storm)
        for reference_user, storm_user, _, _ in pairs:
            assert await _reads(first, a, storm_user) == await _reads(first, a, reference_user)
    await _check_inbox(session, [e for _, _, x, y in pairs for e in x.events + y.events])
