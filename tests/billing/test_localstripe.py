"""Against localstripe: our StripeClient creates the customer and subscription, localstripe signs
and delivers its webhooks to kiban served on a real port, and the plan follows.

Checkout and Portal sessions (which localstripe lacks) go to a small stub of those two endpoints
that forwards everything else to localstripe.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from kiban.app import create_app
from kiban.billing import simulate
from kiban.billing.entitlements import resolve_entitlement
from kiban.billing.reconcile import reconcile
from kiban.billing.service import grace
from kiban.billing.state import expire_due
from kiban.billing.stripe_client import StripeClient
from kiban.core import clock
from kiban.core.db import session_scope
from kiban.models import User
from kiban.settings import Settings
from tests.billing.conftest import PRO_PRICE, WEBHOOK_SECRET, sign
from tests.billing.servers import STRIPE_KEY, CheckoutStub, LocalStripe, Served, eventually
from tests.conftest import auth_headers, create_user, make_client


@pytest.fixture(scope="session")
def localstripe() -> Iterator[LocalStripe]:
    server = LocalStripe()
    server.start()
    yield server
    server.stop()


@dataclass
class Stack:
    app: FastAPI
    served: Served
    stub: CheckoutStub
    stripe: LocalStripe

    @property
    def client(self) -> StripeClient:
        client: StripeClient = self.app.state.stripe
        return client


@pytest.fixture
async def stack(
    localstripe: LocalStripe, make_settings: Callable[..., Settings], plans_file: Path
) -> AsyncIterator[Stack]:
    stub = CheckoutStub(localstripe.url)
    async with Served(stub.app) as stub_served:
        settings = make_settings(
            stripe_secret_key=STRIPE_KEY,
            stripe_api_base=stub_served.url,
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_max_network_retries=0,
            plans_file=plans_file,
        )
        app = create_app(settings)
        async with Served(app) as served:
            await localstripe.reset(f"{served.url}/billing/webhook", WEBHOOK_SECRET)
            await localstripe.post(
                "/v1/plans",
                {
                    "id": PRO_PRICE,
                    "amount": "2000",
                    "currency": "usd",
                    "interval": "month",
                    "product[name]": "kiban Pro",
                },
            )
            yield Stack(app, served, stub, localstripe)


async def _new_user(app: FastAPI) -> User:
    async with app.state.sessionmaker() as session:
        return await create_user(session)


async def _view(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.get("/billing/subscription", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _set_card(stripe: LocalStripe, customer_id: str, test_card: str) -> None:
    pm = await stripe.post(f"/v1/payment_methods/{test_card}/attach", {"customer": customer_id})
    await stripe.post(
        f"/v1/customers/{customer_id}", {"invoice_settings[default_payment_method]": pm["id"]}
    )


async def _card_requiring_authentication(stripe: LocalStripe) -> str:
    card = {"number": "4000002500003155", "exp_month": "12", "exp_year": "2030", "cvc": "123"}
    pm = await stripe.post(
        "/v1/payment_methods", {"type": "card", **{f"card[{k}]": v for k, v in card.items()}}
    )
    return str(pm["id"])


async def test_checkout_session_for_the_plan_price_reuses_the_customer(stack: Stack) -> None:
    user = await _new_user(stack.app)
    headers = auth_headers(stack.app, user)
    async with make_client(stack.app) as client:
        first = await client.post("/billing/checkout", json={"plan": "pro"}, headers=headers)
        await client.post("/billing/checkout", json={"plan": "pro"}, headers=headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["url"].startswith("https://checkout.stripe.com/")
    assert body["session_id"].startswith("cs_")
    (_, form, request_headers), (_, again, _) = [
        r for r in stack.stub.requests if r[0] == "checkout"
    ]
    assert form["mode"] == "subscription"
    assert form["line_items[0][price]"] == PRO_PRICE
    assert form["line_items[0][quantity]"] == "1"
    assert form["client_reference_id"] == str(user.id)
    assert form["metadata[user_id]"] == str(user.id)
    assert form["subscription_data[metadata][user_id]"] == str(user.id)
    assert form["success_url"].startswith("http")
    assert form["cancel_url"].startswith("http")
    assert request_headers["stripe-version"] == "2026-10-28.endive"
    assert again["customer"] == form["customer"]  # the Stripe customer is created once
    customer = await stack.stripe.get(f"/v1/customers/{form['customer']}")
    assert customer["email"] == user.email
    assert customer["metadata"]["user_id"] == str(user.id)


async def test_checkout_errors_have_codes(stack: Stack) -> None:
    user = await _new_user(stack.app)
    headers = auth_headers(stack.app, user)
    async with make_client(stack.app) as client:
        unknown = await client.post("/billing/checkout", json={"plan": "gold"}, headers=headers)
        free = await client.post("/billing/checkout", json={"plan": "free"}, headers=headers)
        portal = await client.post("/billing/portal", headers=headers)
        anonymous = await client.post("/billing/checkout", json={"plan": "pro"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_plan")
    assert (free.status_code, free.json()["error"]["code"]) == (409, "plan_not_purchasable")
    assert (portal.status_code, portal.json()["error"]["code"]) == (404, "no_billing_account")
    assert anonymous.status_code == 401


async def test_portal_session_for_the_users_customer(stack: Stack) -> None:
    user = await _new_user(stack.app)
    headers = auth_headers(stack.app, user)
    async with make_client(stack.app) as client:
        await client.post("/billing/checkout", json={"plan": "pro"}, headers=headers)
        response = await client.post("/billing/portal", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["url"].startswith("https://billing.stripe.com/")
    checkout = next(f for name, f, _ in stack.stub.requests if name == "checkout")
    portal = next(f for name, f, _ in stack.stub.requests if name == "portal")
    assert portal["customer"] == checkout["customer"]
    assert portal["return_url"].startswith("http")


async def test_stripe_down_is_502(make_settings: Callable[..., Settings], plans_file: Path) -> None:
    from tests.billing.servers import free_port
    from tests.conftest import RunningApp

    settings = make_settings(
        stripe_secret_key=STRIPE_KEY,
        stripe_api_base=f"http://127.0.0.1:{free_port()}",
        stripe_max_network_retries=0,
        plans_file=plans_file,
    )
    async with RunningApp(create_app(settings)) as app, make_client(app) as client:
        user = await _new_user(app)
        response = await client.post(
            "/billing/checkout", json={"plan": "pro"}, headers=auth_headers(app, user)
        )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "stripe_error"
    assert "None" not in response.json()["error"]["message"]


async def test_billing_without_stripe_key_is_503(client: httpx.AsyncClient, app: FastAPI) -> None:
    async with app.state.sessionmaker() as session:
        user = await create_user(session)
    response = await client.post(
        "/billing/checkout", json={"plan": "pro"}, headers=auth_headers(app, user)
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "billing_not_configured"


async def test_full_lifecycle_against_localstripe(stack: Stack) -> None:
    app, stripe = stack.app, stack.stripe
    user = await _new_user(app)
    headers = auth_headers(app, user)

    async def plan_now() -> tuple[str, datetime]:
        async with app.state.sessionmaker() as session:
            ent = await resolve_entitlement(
                session, user, clock.now(), catalog=app.state.plans, grace=grace(app.state.settings)
            )
        return ent.plan.name, ent.period_end

    async with make_client(app) as client:
        assert (await _view(client, headers))["status"] == "free"
        assert (await plan_now())[0] == "free"

        # free -> checkout: the user is sent to Stripe Checkout with a customer of their own.
        response = await client.post("/billing/checkout", json={"plan": "pro"}, headers=headers)
        assert response.status_code == 200, response.text
        session_id = response.json()["session_id"]
        customer_id = next(f for n, f, _ in stack.stub.requests if n == "checkout")["customer"]

        # The customer pays; Stripe creates the subscription and tells us (localstripe signs and
        # delivers customer.subscription.created and invoice.payment_succeeded itself).
        await _set_card(stripe, customer_id, "pm_card_visa")
        sub = await stack.client.create_subscription(
            customer_id=customer_id, price_id=PRO_PRICE, metadata={"user_id": str(user.id)}
        )
        sub_id = sub["id"]
        period_end = datetime.fromtimestamp(sub["current_period_end"], UTC)
        completed = simulate.checkout_session_object(
            customer_id=customer_id, subscription_id=sub_id, user_id=str(user.id), plan="pro"
        )
        completed["id"] = session_id
        body = orjson.dumps(
            simulate.event("checkout.session.completed", completed, created=int(clock.timestamp()))
        )
        async with httpx.AsyncClient() as raw:
            delivered = await raw.post(
                f"{stack.served.url}/billing/webhook",
                content=body,
                headers={"Stripe-Signature": sign(body)},
            )
        assert delivered.status_code == 200, delivered.text

        # -> paid
        async def is_(status: str, plan: str) -> bool:
            view = await _view(client, headers)
            return view["status"] == status and view["plan"] == plan

        await eventually(lambda: is_("active", "pro"))
        assert await plan_now() == ("pro", period_end)

        # -> payment failed at renewal: access kept while past due.
        # (localstripe reports a renewal failure when 3-D Secure authentication fails.)
        await _set_card(stripe, customer_id, await _card_requiring_authentication(stripe))
        invoice = await stripe.post(
            "/v1/invoices", {"customer": customer_id, "subscription": sub_id}
        )
        invoice = await stripe.post(f"/v1/invoices/{invoice['id']}/pay")
        intent = await stripe.get(f"/v1/payment_intents/{invoice['payment_intent']}")
        await stripe.post(
            f"/v1/payment_intents/{intent['id']}/_authenticate",
            {"client_secret": intent["client_secret"], "success": "false"},
        )
        await eventually(lambda: is_("past_due", "pro"))
        assert (await plan_now())[0] == "pro"

        # -> recovered: a good card, the invoice paid.
        await _set_card(stripe, customer_id, "pm_card_visa")
        await stripe.post(f"/v1/invoices/{invoice['id']}/pay")
        await eventually(lambda: is_("active", "pro"))

        # -> canceled at period end (the portal does this in production). localstripe sends no
        # event for it: reconcile finds the drift and repairs it.
        await stack.client.set_cancel_at_period_end(sub_id, True)
        # (Two seconds on: a read in the same second as the last event defers to the event.)
        with clock.shifted(timedelta(seconds=2)):
            changes, missing, _ = await reconcile(
                app.state.sessionmaker, stack.client, grace(app.state.settings)
            )
        assert missing == []
        assert [c.subscription_id for c in changes] == [sub_id]
        assert changes[0].fields["cancel_at_period_end"] == (False, True)
        assert changes[0].fields["state"] == ("active", "canceled")
        view = await _view(client, headers)
        assert view["status"] == "canceled"
        assert view["plan"] == "pro"
        assert view["cancel_at_period_end"] is True
        assert (await reconcile(app.state.sessionmaker, stack.client, grace(app.state.settings)))[
            0
        ] == []

        # -> expired: the period ends; the plan falls back at once, the sweep persists it.
        with clock.shifted(period_end - clock.now() + timedelta(seconds=1)):
            view = await _view(client, auth_headers(app, user))
            assert view["status"] == "expired"
            assert view["plan"] == "free"
            plan, quota_period_end = await plan_now()
            assert plan == "free"
            assert quota_period_end.day == 1
            async with session_scope(app.state.sessionmaker) as session:
                expired = await expire_due(session, grace(app.state.settings))
            assert [s.stripe_subscription_id for s in expired] == [sub_id]


async def test_subscription_deleted_in_stripe_ends_access(stack: Stack) -> None:
    app, stripe = stack.app, stack.stripe
    user = await _new_user(app)
    headers = auth_headers(app, user)
    async with make_client(app) as client:
        await client.post("/billing/checkout", json={"plan": "pro"}, headers=headers)
        customer_id = next(f for n, f, _ in stack.stub.requests if n == "checkout")["customer"]
        await _set_card(stripe, customer_id, "pm_card_visa")
        sub = await stack.client.create_subscription(customer_id=customer_id, price_id=PRO_PRICE)

        async def status() -> str:
            return str((await _view(client, headers))["status"])

        await eventually(lambda: _equals(status, "active"))
        async with httpx.AsyncClient(base_url=stripe.url, headers=stripe.headers) as raw:
            (await raw.delete(f"/v1/subscriptions/{sub['id']}")).raise_for_status()
        await eventually(lambda: _equals(status, "expired"))
        assert (await _view(client, headers))["plan"] == "free"


async def _equals(get: Callable[[], Any], expected: object) -> bool:
    return bool(await get() == expected)


async def test_reconcile_command_repairs_drift_and_prints_it(
    stack: Stack, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from typer.testing import CliRunner

    from kiban.cli import app as cli

    app, stripe = stack.app, stack.stripe
    user = await _new_user(app)
    headers = auth_headers(app, user)
    async with make_client(app) as client:
        await client.post("/billing/checkout", json={"plan": "pro"}, headers=headers)
        customer_id = next(f for n, f, _ in stack.stub.requests if n == "checkout")["customer"]
        await _set_card(stripe, customer_id, "pm_card_visa")
        sub = await stack.client.create_subscription(customer_id=customer_id, price_id=PRO_PRICE)

        async def status() -> str:
            return str((await _view(client, headers))["status"])

        await eventually(lambda: _equals(status, "active"))
        await stack.client.set_cancel_at_period_end(sub["id"], True)
        settings = app.state.settings
        for name, value in {
            "KIBAN_DATABASE_URL": database_url,
            "KIBAN_STRIPE_SECRET_KEY": STRIPE_KEY,
            "KIBAN_STRIPE_API_BASE": settings.stripe_api_base,
            "KIBAN_PLANS_FILE": str(settings.plans_file),
        }.items():
            monkeypatch.setenv(name, value)
        result = await asyncio.to_thread(
            CliRunner().invoke, cli, ["billing", "reconcile"], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        assert f"changed {sub['id']} (user {user.id})" in result.output
        assert "state: active -> canceled" in result.output
        assert "cancel_at_period_end: False -> True" in result.output
        assert "1 subscription(s) repaired" in result.output
        assert await status() == "canceled"


async def test_checkout_while_subscribed_is_409(stack: Stack) -> None:
    from tests.billing.conftest import post_event, subscription_event

    user = await _new_user(stack.app)
    headers = auth_headers(stack.app, user)
    async with make_client(stack.app) as client:
        event = subscription_event(
            "customer.subscription.created",
            subscription_id="sub_already",
            customer_id="cus_already",
            status="active",
            created=int(clock.timestamp()),
            period_end=clock.now() + timedelta(days=30),
            user_id=str(user.id),
        )
        assert (await post_event(client, event)).status_code == 200
        response = await client.post("/billing/checkout", json={"plan": "pro"}, headers=headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "already_subscribed"
    assert not any(name == "checkout" for name, _, _ in stack.stub.requests)
