"""Billing fixtures: a plans file with Stripe prices, the webhook secret, signed event posting."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.billing import simulate
from kiban.billing.plans import DEFAULT_PLANS_FILE
from kiban.core import clock
from kiban.models.billing import WebhookEvent
from kiban.settings import Settings

WEBHOOK_SECRET = "whsec_test_0123456789abcdef0123456789abcdef"
PRO_PRICE = "price_kiban_pro_monthly"
PRO_YEARLY = "price_kiban_pro_yearly"
TEAM_PRICE = "price_kiban_team_monthly"
TEAM_YEARLY = "price_kiban_team_yearly"
TEAM_PLAN = f"""
[plans.team]
display_name = "Team"
monthly_tokens = 20_000_000
requests_per_minute = 600
models = ["*"]
max_tokens = 16_384
max_prompt_tokens = 128_000
stripe_price_ids = ["{TEAM_PRICE}", "{TEAM_YEARLY}"]

[plans.team.documents]
max_documents = 5_000
max_document_bytes = 50_000_000
max_total_bytes = 10_000_000_000
"""


def sign(payload: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """Our own Stripe-Signature for a payload (written from Stripe's docs, not the SDK)."""
    # The server's clock (tests shift it); the real one when nothing shifted it.
    t = int(clock.timestamp()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def write_plans_file(directory: Path) -> Path:
    """The shipped plans with a Stripe price for ``pro``."""
    text = DEFAULT_PLANS_FILE.read_text()
    head, sep, tail = text.rpartition("stripe_price_ids = []")
    assert sep, "the shipped plans file changed shape"
    path = directory / "plans.toml"
    path.write_text(head + f'stripe_price_ids = ["{PRO_PRICE}"]' + tail)
    return path


def write_team_plans_file(directory: Path) -> Path:
    """The shipped plans with monthly and yearly prices for ``pro``, and a ``team`` plan."""
    text = DEFAULT_PLANS_FILE.read_text()
    head, sep, tail = text.rpartition("stripe_price_ids = []")
    assert sep, "the shipped plans file changed shape"
    path = directory / "plans.toml"
    path.write_text(head + f'stripe_price_ids = ["{PRO_PRICE}", "{PRO_YEARLY}"]' + tail + TEAM_PLAN)
    return path


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    return write_plans_file(tmp_path)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], plans_file: Path) -> Settings:
    return make_settings(stripe_webhook_secret=WEBHOOK_SECRET, plans_file=plans_file)


async def post_event(
    client: httpx.AsyncClient, event: dict[str, Any], *, timestamp: int | None = None
) -> httpx.Response:
    """POST a correctly signed event to the webhook endpoint."""
    body = orjson.dumps(event)
    return await client.post(
        "/billing/webhook",
        content=body,
        headers={
            "Stripe-Signature": sign(body, timestamp=timestamp),
            "Content-Type": "application/json",
        },
    )


def period(start: datetime, days: int = 30) -> tuple[datetime, datetime]:
    return start, start + timedelta(days=days)


def subscription_event(
    event_type: str,
    *,
    subscription_id: str,
    customer_id: str,
    status: str,
    created: int,
    period_end: datetime,
    user_id: str | None = None,
    cancel_at_period_end: bool = False,
    price_id: str = PRO_PRICE,
) -> dict[str, Any]:
    """A customer.subscription.* event."""
    obj = simulate.subscription_object(
        subscription_id=subscription_id,
        customer_id=customer_id,
        price_id=price_id,
        status=status,
        period_start=period_end - timedelta(days=30),
        period_end=period_end,
        cancel_at_period_end=cancel_at_period_end,
        user_id=user_id,
        ended_at=datetime.fromtimestamp(created, UTC) if status == "canceled" else None,
    )
    return simulate.event(event_type, obj, created=created)


def customer_event(created: int | None = None) -> dict[str, object]:
    """A realistic event that kiban records but does not act on (customer.created)."""
    obj = {"id": "cus_123", "object": "customer", "email": "a@example.com"}
    return simulate.event("customer.created", obj, created=created or int(clock.timestamp()))


async def inbox_count(session: AsyncSession) -> int:
    """How many events the webhook inbox holds."""
    return int(await session.scalar(select(func.count()).select_from(WebhookEvent)) or 0)
