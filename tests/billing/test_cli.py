"""`kiban stripe simulate` walks the whole lifecycle offline; `kiban billing expire` sweeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner, Result

from kiban.app import create_app
from kiban.billing.entitlements import resolve_entitlement
from kiban.billing.service import grace
from kiban.cli import app as cli
from kiban.core import clock
from kiban.models import User
from kiban.settings import Settings
from tests.billing.conftest import WEBHOOK_SECRET
from tests.billing.servers import Served
from tests.conftest import TEST_SECRET, auth_headers, create_user, make_client


@pytest.fixture
async def served(
    make_settings: Callable[..., Settings],
    plans_file: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[FastAPI, str]]:
    settings = make_settings(stripe_webhook_secret=WEBHOOK_SECRET, plans_file=plans_file)
    # The CLI reads the same configuration from the environment, as on a developer's machine.
    monkeypatch.setenv("KIBAN_DATABASE_URL", database_url)
    monkeypatch.setenv("KIBAN_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("KIBAN_PLANS_FILE", str(plans_file))
    monkeypatch.setenv("KIBAN_SECRET_KEY", TEST_SECRET)
    async with Served(create_app(settings)) as server:
        yield server.server.config.app, f"{server.url}/billing/webhook"


async def kiban(*args: str) -> Result:
    """Run the CLI in a thread (it runs its own event loop, and the served app needs ours)."""
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), catch_exceptions=False)


async def _view(app: FastAPI, user: User) -> dict[str, Any]:
    async with make_client(app) as client:
        response = await client.get("/billing/subscription", headers=auth_headers(app, user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _monthly_tokens(app: FastAPI, user: User) -> int:
    async with app.state.sessionmaker() as session:
        tokens = (
            await resolve_entitlement(
                session, user, clock.now(), catalog=app.state.plans, grace=grace(app.state.settings)
            )
        ).plan.monthly_tokens
    # The quota the user sees over HTTP follows the same plan.
    async with make_client(app) as client:
        usage = await client.get("/me/usage", headers=auth_headers(app, user))
    assert usage.status_code == 200, usage.text
    assert usage.json()["tokens"]["plan_allowance"] == tokens
    return tokens


async def test_simulated_lifecycle_with_quotas_following_the_plan(
    served: tuple[FastAPI, str],
) -> None:
    app, url = served
    async with app.state.sessionmaker() as session:
        user = await create_user(session, email="dev@example.com")
    free_tokens = await _monthly_tokens(app, user)

    async def simulate(event: str, *extra: str) -> None:
        result = await kiban(
            "stripe", "simulate", event, "--email", "dev@example.com", "--url", url, *extra
        )
        assert result.exit_code == 0, result.output
        assert "HTTP 200" in result.output

    await simulate("checkout.session.completed")
    assert (await _view(app, user))["plan"] == "free"  # paid once the subscription is described
    await simulate("customer.subscription.created")
    view = await _view(app, user)
    assert view["plan"] == "pro"
    assert view["status"] == "active"
    pro_tokens = await _monthly_tokens(app, user)
    async with make_client(app) as client:
        usage = (await client.get("/me/usage", headers=auth_headers(app, user))).json()
    assert usage["plan"]["name"] == "pro"
    assert usage["period"]["source"] == "subscription"
    assert datetime.fromisoformat(usage["period"]["end"]) == datetime.fromisoformat(
        view["current_period_end"]
    )
    assert pro_tokens > free_tokens

    await simulate("invoice.payment_failed")
    assert (await _view(app, user))["status"] == "past_due"
    assert await _monthly_tokens(app, user) == pro_tokens

    await simulate("invoice.paid")
    assert (await _view(app, user))["status"] == "active"

    await simulate("customer.subscription.updated", "--cancel-at-period-end")
    view = await _view(app, user)
    assert view["status"] == "canceled"
    assert view["plan"] == "pro"
    assert view["cancel_at_period_end"]

    with clock.shifted(timedelta(days=30, seconds=1)):
        view = await _view(app, user)
        assert view["status"] == "expired"
        assert view["plan"] == "free"
        assert await _monthly_tokens(app, user) == free_tokens
        result = await kiban("billing", "expire")
        assert result.exit_code == 0, result.output
        assert "1 subscription(s) expired" in result.output
        again = await kiban("billing", "expire")
        assert "0 subscription(s) expired" in again.output


async def test_simulated_deletion_ends_access_at_once(served: tuple[FastAPI, str]) -> None:
    app, url = served
    async with app.state.sessionmaker() as session:
        user = await create_user(session, email="gone@example.com")
    for event in ("customer.subscription.created", "customer.subscription.deleted"):
        result = await kiban(
            "stripe", "simulate", event, "--email", "gone@example.com", "--url", url
        )
        assert result.exit_code == 0, result.output
    view = await _view(app, user)
    assert view["status"] == "expired"
    assert view["plan"] == "free"


async def test_simulate_explains_what_is_missing(served: tuple[FastAPI, str]) -> None:
    _, url = served
    unknown = await kiban(
        "stripe", "simulate", "invoice.paid", "--email", "nobody@example.com", "--url", url
    )
    assert unknown.exit_code == 2
    assert "no user with email" in unknown.output
    bad = await kiban("stripe", "simulate", "charge.refunded", "--email", "x@example.com")
    assert bad.exit_code == 2
    assert "EVENT must be one of" in bad.output


async def test_simulate_reports_an_unreachable_server(
    served: tuple[FastAPI, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = served
    async with app.state.sessionmaker() as session:
        await create_user(session, email="offline@example.com")
    result = await kiban(
        "stripe",
        "simulate",
        "customer.subscription.created",
        "--email",
        "offline@example.com",
        "--url",
        "http://127.0.0.1:9/billing/webhook",
    )
    assert result.exit_code == 2
    assert "could not reach" in result.output
