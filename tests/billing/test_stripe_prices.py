"""KIBAN_STRIPE_PRICES: Stripe prices per plan without a copy of the plans file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from kiban.app import create_app
from kiban.billing.plans import (
    apply_stripe_prices,
    catalog_for,
    load_catalog,
    load_plans,
    parse_stripe_prices,
)
from kiban.cli import app as cli
from kiban.core import clock
from kiban.core.doctor import Finding
from kiban.doctor import run_doctor
from kiban.models import User
from kiban.models.billing import BillingCustomer
from kiban.settings import ConfigurationError, Settings
from tests.billing.conftest import (
    PRO_PRICE,
    WEBHOOK_SECRET,
    post_event,
    subscription_event,
    write_plans_file,
)
from tests.billing.servers import STRIPE_KEY, CheckoutStub, Served
from tests.conftest import TEST_SECRET, RunningApp, auth_headers, create_user, make_client

MONTHLY, YEARLY = "price_env_pro_monthly", "price_env_pro_yearly"
ENV_PRICES = f"pro={MONTHLY},{YEARLY}"


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """The shipped plans (no plans file at all) with the pro prices from the variable."""
    return make_settings(stripe_webhook_secret=WEBHOOK_SECRET, stripe_prices=ENV_PRICES)


# --- parsing ------------------------------------------------------------------------------------


def test_parses_plans_and_their_prices_in_order() -> None:
    value = " pro = price_a , price_b ; team=price_c "
    assert parse_stripe_prices(value) == {"pro": ("price_a", "price_b"), "team": ("price_c",)}


_names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,10}", fullmatch=True)
_prices = st.from_regex(r"price_[A-Za-z0-9]{1,12}", fullmatch=True)


@given(st.dictionaries(_names, st.lists(_prices, min_size=1, max_size=4, unique=True), min_size=1))
def test_parsing_reads_back_what_was_written(mapping: dict[str, list[str]]) -> None:
    value = ";".join(f"{name}={','.join(prices)}" for name, prices in mapping.items())
    assert parse_stripe_prices(value) == {name: tuple(p) for name, p in mapping.items()}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("pro", "entry 'pro' is not plan=price"),
        ("=price_a", "entry '=price_a' is not plan=price"),
        ("pro=price_a;;team=price_b", "entry 2 is empty"),
        ("pro=price_a;", "entry 2 is empty"),
        ("pro=", "plan 'pro' has an empty price id"),
        ("pro=price_a,,price_b", "plan 'pro' has an empty price id"),
        ("pro=price a", "'price a' (plan 'pro') is not a price id"),
        ("pro=price_a=price_b", "'price_a=price_b' (plan 'pro') is not a price id"),
        ("pro=price_a;pro=price_b", "plan 'pro' is listed twice"),
        ("pro=price_a,price_a", "price 'price_a' is listed twice for plan 'pro'"),
    ],
)
def test_a_malformed_value_names_the_variable_and_the_problem(value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_stripe_prices(value)
    assert str(info.value).startswith(f"KIBAN_STRIPE_PRICES is invalid: {problem}")


def test_a_syntax_error_shows_the_expected_format() -> None:
    with pytest.raises(ConfigurationError, match=r'e\.g\. "pro=price_a,price_b;team=price_c"'):
        parse_stripe_prices("pro:price_a")


# --- merging over the plans file -----------------------------------------------------------------


def test_listed_plans_get_the_variable_prices_and_the_others_keep_the_file(tmp_path: Path) -> None:
    plans_file = write_plans_file(tmp_path)  # pro buys PRO_PRICE
    catalog = load_catalog(plans_file, "free=price_free_a")
    assert catalog.plans["free"].stripe_price_ids == ("price_free_a",)
    assert catalog.plans["pro"].stripe_price_ids == (PRO_PRICE,)
    replaced = load_catalog(plans_file, ENV_PRICES)
    assert replaced.plans["pro"].stripe_price_ids == (MONTHLY, YEARLY)
    assert replaced.for_price(PRO_PRICE) is None  # replaced, not added to


def test_the_merge_changes_nothing_but_the_prices() -> None:
    shipped = load_plans()
    merged = apply_stripe_prices(shipped, ENV_PRICES)
    for name, plan in shipped.plans.items():
        assert merged.plans[name].model_dump(exclude={"stripe_price_ids"}) == plan.model_dump(
            exclude={"stripe_price_ids"}
        )
    assert merged.default_plan == shipped.default_plan


@pytest.mark.parametrize("value", [None, "", "  "])
def test_unset_or_blank_leaves_the_file_alone(value: str | None) -> None:
    assert load_catalog(None, value) == load_plans()


def test_a_plan_not_in_the_catalog_is_refused() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_catalog(None, "pro=price_a;gold=price_b")
    message = str(info.value)
    assert "KIBAN_STRIPE_PRICES is invalid: plan 'gold' is not in" in message
    assert "plans.toml (its plans: free, pro)" in message


def test_a_price_given_to_two_plans_is_refused() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_catalog(None, "pro=price_a,price_b;free=price_b")
    assert str(info.value) == (
        "KIBAN_STRIPE_PRICES is invalid: price 'price_b' is given to two plans, 'free' and 'pro'"
    )


def test_a_price_the_file_gives_another_plan_is_refused(tmp_path: Path) -> None:
    plans_file = write_plans_file(tmp_path)
    with pytest.raises(ConfigurationError) as info:
        load_catalog(plans_file, f"free={PRO_PRICE}")
    assert str(info.value) == (
        f"KIBAN_STRIPE_PRICES is invalid: price {PRO_PRICE!r} is given to two plans, 'free' and "
        f"'pro' ('pro' has it in {plans_file})"
    )


def test_moving_a_price_between_plans_is_allowed(tmp_path: Path) -> None:
    catalog = load_catalog(write_plans_file(tmp_path), f"free={PRO_PRICE};pro=price_new")
    plan = catalog.for_price(PRO_PRICE)
    assert plan is not None
    assert plan.name == "free"


# --- start-up ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("gold=price_a", "plan 'gold' is not in"),
        ("pro price_a", "is not plan=price"),
        ("pro=", "empty price id"),
        ("pro=price_a;free=price_a", "given to two plans"),
    ],
)
def test_the_app_refuses_to_start_on_a_bad_value(
    value: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIBAN_STRIPE_PRICES", value)
    settings = Settings(_env_file=None, dev_secret_file=tmp_path / "s")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="KIBAN_STRIPE_PRICES is invalid: ") as info:
        create_app(settings)
    assert problem in str(info.value)


def test_the_app_and_the_cli_use_the_merged_catalog(settings: Settings) -> None:
    app = create_app(settings)
    assert app.state.plans.plans["pro"].stripe_price_ids == (MONTHLY, YEARLY)
    assert catalog_for(settings) == app.state.plans  # what the CLI and the doctor see


def test_code_outside_the_app_reads_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KIBAN_STRIPE_PRICES", ENV_PRICES)
    settings = Settings(_env_file=None, dev_secret_file=tmp_path / "s")  # type: ignore[call-arg]
    assert catalog_for(settings).plans["pro"].stripe_price_ids == (MONTHLY, YEARLY)


# --- the prices at work --------------------------------------------------------------------------


@pytest.mark.parametrize("price", [MONTHLY, YEARLY])
async def test_a_subscription_to_a_variable_price_grants_the_plan(
    app: FastAPI, client: httpx.AsyncClient, user: User, price: str
) -> None:
    event = subscription_event(
        "customer.subscription.created",
        subscription_id="sub_env",
        customer_id="cus_env",
        status="active",
        created=int(clock.timestamp()),
        period_end=clock.now() + timedelta(days=30),
        user_id=str(user.id),
        price_id=price,
    )
    assert (await post_event(client, event)).json()["outcome"] == "applied"
    response = await client.get("/billing/subscription", headers=auth_headers(app, user))
    assert response.status_code == 200, response.text
    assert (response.json()["plan"], response.json()["status"]) == ("pro", "active")


async def test_checkout_sells_the_first_price(
    make_settings: Callable[..., Settings], session: AsyncSession, user: User
) -> None:
    # The user already has a Stripe customer, so Checkout is the only call made to Stripe.
    session.add(BillingCustomer(user_id=user.id, stripe_customer_id="cus_env"))
    await session.commit()
    stub = CheckoutStub("http://127.0.0.1:9")
    async with Served(stub.app) as stripe:
        settings = make_settings(
            stripe_secret_key=STRIPE_KEY, stripe_api_base=stripe.url, stripe_prices=ENV_PRICES
        )
        async with RunningApp(create_app(settings)) as app, make_client(app) as client:
            response = await client.post(
                "/billing/checkout", json={"plan": "pro"}, headers=auth_headers(app, user)
            )
    assert response.status_code == 200, response.text
    [(_, form, _)] = [r for r in stub.requests if r[0] == "checkout"]
    assert form["line_items[0][price]"] == MONTHLY


async def _billing_findings(settings: Settings) -> list[Finding]:
    return dict(await run_doctor(settings))["Stripe billing"]


async def test_doctor_checks_the_variable_prices_in_stripe(
    make_settings: Callable[..., Settings],
) -> None:
    stub = CheckoutStub("http://127.0.0.1:9", prices=(MONTHLY,))
    async with Served(stub.app) as stripe:
        settings = make_settings(
            stripe_secret_key=STRIPE_KEY,
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_api_base=stripe.url,
            stripe_max_network_retries=0,
            stripe_prices=ENV_PRICES,
        )
        findings = await _billing_findings(settings)
    assert [(f.status, f.title) for f in findings[2:]] == [
        ("ok", f"price {MONTHLY} (plan pro) exists in Stripe"),
        ("fail", f"price {YEARLY} (plan pro) does not exist in this Stripe account"),
    ]


@pytest.mark.parametrize("billing", ["on", "off"])
async def test_doctor_reports_a_bad_value(
    make_settings: Callable[..., Settings], billing: str
) -> None:
    key = {"stripe_secret_key": STRIPE_KEY} if billing == "on" else {}
    settings = make_settings(stripe_webhook_secret=WEBHOOK_SECRET, stripe_prices="gold=x", **key)
    findings = await _billing_findings(settings)
    failed = findings[-1]
    assert failed.status == "fail"
    assert failed.title == "the plans do not load: kiban refuses to start"
    assert "KIBAN_STRIPE_PRICES is invalid: plan 'gold'" in failed.detail


# --- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
async def served_url(
    app: FastAPI, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """The app on a real port, and the CLI configured from the environment like it."""
    monkeypatch.setenv("KIBAN_DATABASE_URL", database_url)
    monkeypatch.setenv("KIBAN_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("KIBAN_SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("KIBAN_STRIPE_PRICES", ENV_PRICES)
    async with Served(app) as server:
        yield f"{server.url}/billing/webhook"


async def _simulate(*args: str) -> tuple[int, str]:
    # In a thread: the CLI runs its own event loop, and the served app needs this one.
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke, cli, ["stripe", "simulate", *args], catch_exceptions=False
    )
    return result.exit_code, result.output


async def test_simulate_uses_the_variable_price(
    app: FastAPI, served_url: str, session: AsyncSession
) -> None:
    user = await create_user(session, email="env@example.com")
    event = ("customer.subscription.created", "--email", user.email, "--url", served_url)
    code, output = await _simulate(*event)
    assert code == 0, output
    assert "HTTP 200" in output
    async with make_client(app) as client:
        body = (await client.get("/billing/subscription", headers=auth_headers(app, user))).json()
    assert body["plan"] == "pro"


async def test_simulate_refuses_a_bad_value(
    served_url: str, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await create_user(session, email="env@example.com")
    monkeypatch.setenv("KIBAN_STRIPE_PRICES", "pro=")
    code, output = await _simulate("customer.subscription.created", "--email", user.email)
    assert code == 2
    assert "KIBAN_STRIPE_PRICES is invalid: plan 'pro' has an empty price id" in output
