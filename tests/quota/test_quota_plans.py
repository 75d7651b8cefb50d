"""The plans file: shipped defaults, replacement through KIBAN_PLANS_FILE, clear start-up errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.app import create_app
from kiban.billing.entitlements import calendar_month, resolve_entitlement
from kiban.billing.plans import PlanCatalog, load_plans, parse_plans
from kiban.core.db import create_engine, create_sessionmaker
from kiban.models import User
from kiban.settings import ConfigurationError, Settings
from tests.quota.conftest import TEST_PLANS

GRACE = timedelta(days=7)


def test_shipped_plans_define_free_and_pro() -> None:
    catalog = load_plans()
    assert catalog.default_plan == "free"
    free, pro = catalog.plans["free"], catalog.plans["pro"]
    assert free.monthly_tokens < pro.monthly_tokens
    assert free.allows_model("extractive")
    assert not free.allows_model("gpt-4o")
    assert pro.allows_model("anything-at-all")
    assert free.documents.max_documents > 0


def test_model_patterns(catalog: PlanCatalog) -> None:
    free = catalog.plans["free"]
    assert free.allows_model("gpt-4o-mini")
    assert not free.allows_model("gpt-4.1")


def test_price_ids_map_to_plans(catalog: PlanCatalog) -> None:
    plan = catalog.for_price("price_pro_monthly")
    assert plan is not None
    assert plan.name == "pro"
    assert catalog.for_price("price_unknown") is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("monthly_tokens = 1_000\n", ""), "plans.free.monthly_tokens: Field required"),
        (("monthly_tokens = 1_000\n", "monthly_tokens = -5\n"), "plans.free.monthly_tokens"),
        (("max_tokens = 50\n", "max_tokens = 50\nmax_token = 9\n"), "plans.free.max_token"),
        (('default_plan = "free"', 'default_plan = "gold"'), "default_plan: 'gold'"),
        (
            ("requests_per_minute = 5\n", 'requests_per_minute = "lots"\n'),
            "plans.pro.requests_per_minute",
        ),
        (("tokens_per_minute = 20_000", "tokens_per_minute = 100"), "plans.pro.tokens_per_minute"),
        (('models = ["*"]', "models = []"), "plans.pro.models"),
        (("[plans.pro]", '[plans."PRO!"]'), "plans.PRO!"),
        (("max_prompt_tokens = 500", "max_prompt_tokens = "), "not valid TOML"),
    ],
)
def test_invalid_plans_name_the_field(change: tuple[str, str], named: str) -> None:
    old, new = change
    assert old in TEST_PLANS
    with pytest.raises(ConfigurationError) as info:
        parse_plans(TEST_PLANS.replace(old, new, 1), source="plans.toml")
    assert named in str(info.value)
    assert "plans.toml" in str(info.value)


def test_a_price_id_buys_one_plan() -> None:
    text = (
        TEST_PLANS.replace('stripe_price_ids = ["price_pro_monthly"]', "").replace(
            "[plans.free.documents]",
            'stripe_price_ids = ["price_pro_monthly"]\n[plans.free.documents]',
        )
        + '\n[plans.team]\nmonthly_tokens = 1\nrequests_per_minute = 1\nmodels = ["*"]\n'
        + (
            'max_tokens = 1\nmax_prompt_tokens = 1\nstripe_price_ids = ["price_pro_monthly"]\n'
            "[plans.team.documents]\nmax_documents = 1\nmax_document_bytes = 1\n"
            "max_total_bytes = 1\n"
        )
    )
    with pytest.raises(ConfigurationError, match=r"plans\.team\.stripe_price_ids"):
        parse_plans(text)


def test_app_refuses_to_start_with_a_bad_plans_file(tmp_path: Path) -> None:
    bad = tmp_path / "plans.toml"
    bad.write_text(TEST_PLANS.replace("max_tokens = 50", "max_tokens = 0"))
    settings = Settings(_env_file=None, plans_file=bad, dev_secret_file=tmp_path / "s")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match=r"plans.free.max_tokens"):
        create_app(settings)
    missing = Settings(
        _env_file=None, plans_file=tmp_path / "nope.toml", dev_secret_file=tmp_path / "s"
    )  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="KIBAN_PLANS_FILE"):
        create_app(missing)


def test_plans_file_setting_replaces_the_defaults(
    tmp_path: Path, plans_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIBAN_PLANS_FILE", str(plans_file))
    app = create_app(Settings(_env_file=None, dev_secret_file=tmp_path / "s"))  # type: ignore[call-arg]
    assert app.state.plans.plans["free"].monthly_tokens == 1_000


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (
            datetime(2026, 11, 27, 2, 0, tzinfo=UTC),
            datetime(2026, 11, 1, tzinfo=UTC),
            datetime(2026, 12, 1, tzinfo=UTC),
        ),
        (
            datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
            datetime(2026, 12, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
        ),
        (
            datetime(2027, 1, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
            datetime(2027, 2, 1, tzinfo=UTC),
        ),
    ],
)
def test_calendar_month_period(now: datetime, start: datetime, end: datetime) -> None:
    assert calendar_month(now) == (start, end)


async def test_entitlement_is_the_admin_plan_or_the_default(
    catalog: PlanCatalog, database_url: str
) -> None:
    now = datetime(2026, 11, 27, tzinfo=UTC)
    engine = create_engine(database_url)
    async with create_sessionmaker(engine)() as session:
        await _check_entitlements(session, catalog, now)
    await engine.dispose()


async def _check_entitlements(session: AsyncSession, catalog: PlanCatalog, now: datetime) -> None:
    free = await resolve_entitlement(session, User(plan=None), now, catalog=catalog, grace=GRACE)
    assert (free.plan.name, free.source) == ("free", "default")
    pro = await resolve_entitlement(session, User(plan="pro"), now, catalog=catalog, grace=GRACE)
    assert (pro.plan.name, pro.source) == ("pro", "admin")
    retired = User(plan="retired")
    gone = await resolve_entitlement(session, retired, now, catalog=catalog, grace=GRACE)
    assert gone.plan.name == "free"
    assert (pro.period_start, pro.period_end) == calendar_month(now)
