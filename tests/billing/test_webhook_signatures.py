"""Webhook signatures: verified on the raw body, with clear 400s and a 503 without a secret."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.app import create_app
from kiban.core import clock
from kiban.settings import Settings
from tests.billing.conftest import (
    WEBHOOK_SECRET,
    customer_event,
    inbox_count,
    post_event,
    sign,
)
from tests.conftest import RunningApp, make_client


async def test_webhook_without_configured_secret_is_503(
    make_settings: Callable[..., Settings],
) -> None:
    async with RunningApp(create_app(make_settings())) as app, make_client(app) as client:
        response = await post_event(client, customer_event())
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "webhook_not_configured"


async def test_missing_signature_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/billing/webhook", content=orjson.dumps(customer_event()))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "signature_missing"


@pytest.mark.parametrize("header", ["garbage", "t=abc,v1=00", "t=123", "v1=deadbeef"])
async def test_malformed_signature_is_400(client: httpx.AsyncClient, header: str) -> None:
    response = await client.post(
        "/billing/webhook",
        content=orjson.dumps(customer_event()),
        headers={"Stripe-Signature": header},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "signature_malformed"


async def test_signature_with_another_secret_is_400(client: httpx.AsyncClient) -> None:
    body = orjson.dumps(customer_event())
    response = await client.post(
        "/billing/webhook",
        content=body,
        headers={"Stripe-Signature": sign(body, secret="whsec_someone_else")},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "signature_invalid"


async def test_non_ascii_signature_is_400_not_500(client: httpx.AsyncClient) -> None:
    body = orjson.dumps(customer_event())
    header = f"t={int(clock.timestamp())},v1=\xe9".encode("latin-1")
    response = await client.post(
        "/billing/webhook", content=body, headers={"Stripe-Signature": header}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "signature_invalid"


async def test_tampered_body_is_400(client: httpx.AsyncClient, session: AsyncSession) -> None:
    body = orjson.dumps(customer_event())
    header = sign(body)
    tampered = body.replace(b"a@example.com", b"b@example.com")
    response = await client.post(
        "/billing/webhook", content=tampered, headers={"Stripe-Signature": header}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "signature_invalid"
    assert await inbox_count(session) == 0


@pytest.mark.parametrize("offset", [-302, 302])
async def test_signature_outside_tolerance_is_400(client: httpx.AsyncClient, offset: int) -> None:
    t = int(clock.timestamp()) + offset
    response = await post_event(client, customer_event(), timestamp=t)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "signature_expired"


async def test_signature_within_tolerance_is_accepted(client: httpx.AsyncClient) -> None:
    response = await post_event(client, customer_event(), timestamp=int(clock.timestamp()) - 290)
    assert response.status_code == 200


async def test_one_of_several_v1_signatures_may_match(client: httpx.AsyncClient) -> None:
    body = orjson.dumps(customer_event())
    good = sign(body)
    header = good.replace(",v1=", ",v1=" + "0" * 64 + ",v1=")
    response = await client.post(
        "/billing/webhook", content=body, headers={"Stripe-Signature": header}
    )
    assert response.status_code == 200


async def test_rolled_secrets_both_verify(
    make_settings: Callable[..., Settings], plans_file: object
) -> None:
    settings = make_settings(stripe_webhook_secret=f"whsec_new_one,{WEBHOOK_SECRET}")
    async with RunningApp(create_app(settings)) as app, make_client(app) as client:
        response = await post_event(client, customer_event())
    assert response.status_code == 200


async def test_signed_non_event_is_400(client: httpx.AsyncClient) -> None:
    body = b'{"hello": "world"}'
    response = await client.post(
        "/billing/webhook", content=body, headers={"Stripe-Signature": sign(body)}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_event"
