"""`kiban doctor` reports billing's configuration problems, each with the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kiban.core.doctor import Finding
from kiban.doctor import run_doctor
from kiban.settings import Settings
from tests.billing.conftest import PRO_PRICE, WEBHOOK_SECRET, write_plans_file
from tests.billing.servers import STRIPE_KEY, CheckoutStub, Served


async def _billing(settings: Settings) -> list[Finding]:
    results = dict(await run_doctor(settings))
    return results["Stripe billing"]


async def test_billing_off_is_reported_not_failed(make_settings: Callable[..., Settings]) -> None:
    findings = await _billing(make_settings())
    assert [(f.status, f.title) for f in findings] == [
        ("ok", "billing is off: KIBAN_STRIPE_SECRET_KEY is not set")
    ]


async def test_missing_webhook_secret_and_unknown_price_fail(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    stub = CheckoutStub("http://127.0.0.1:9", prices=())
    async with Served(stub.app) as server:
        settings = make_settings(
            stripe_secret_key=STRIPE_KEY,
            stripe_api_base=server.url,
            stripe_max_network_retries=0,
            plans_file=write_plans_file(tmp_path),
        )
        findings = await _billing(settings)
    failures = [f.title for f in findings if f.status == "fail"]
    assert failures == [
        "KIBAN_STRIPE_WEBHOOK_SECRET is not set",
        f"price {PRO_PRICE} (plan pro) does not exist in this Stripe account",
    ]
    assert all(f.fix for f in findings if f.status == "fail")


async def test_complete_configuration_passes(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    stub = CheckoutStub("http://127.0.0.1:9", prices=(PRO_PRICE,))
    async with Served(stub.app) as server:
        settings = make_settings(
            stripe_secret_key=STRIPE_KEY,
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_api_base=server.url,
            plans_file=write_plans_file(tmp_path),
        )
        findings = await _billing(settings)
    assert [f.status for f in findings] == ["ok", "ok", "ok"]


async def test_a_key_that_is_not_a_stripe_key_fails(make_settings: Callable[..., Settings]) -> None:
    findings = await _billing(make_settings(stripe_secret_key="pk_test_publishable"))
    assert findings[0].status == "fail"
    assert "not a Stripe secret key" in findings[0].title
