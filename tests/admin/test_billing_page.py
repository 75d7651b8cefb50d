"""The dashboard's billing page (/admin/billing) and the account page's plan and billing portal.

Billing state comes from signed webhooks posted to the app, as Stripe delivers them; the portal
is Stripe's (the Checkout/Portal stub of tests/billing/servers.py, forwarding to localstripe).
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.admin import billing_page
from kiban.app import create_app
from kiban.billing import repository as billing_repo
from kiban.billing import simulate
from kiban.core import clock
from kiban.models import User
from kiban.settings import Settings
from tests.admin.test_dashboard_pages import CSRF, sign_in
from tests.billing.conftest import (
    PRO_PRICE,
    WEBHOOK_SECRET,
    post_event,
    subscription_event,
    write_plans_file,
)
from tests.billing.servers import STRIPE_KEY, CheckoutStub, LocalStripe, Served, free_port
from tests.conftest import RunningApp, auth_headers, create_user, make_client


@pytest.fixture
def settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    # Webhooks accepted (signed with WEBHOOK_SECRET), plans with a Stripe price; no Stripe key.
    return make_settings(
        stripe_webhook_secret=WEBHOOK_SECRET, plans_file=write_plans_file(tmp_path)
    )


def _period_end(days: int = 20) -> datetime:
    return (clock.now() + timedelta(days=days)).replace(microsecond=0)


def _subscription(
    sub_id: str,
    customer_id: str,
    *,
    user: User | None = None,
    status: str = "active",
    period_end: datetime | None = None,
    cancel_at_period_end: bool = False,
) -> dict[str, Any]:
    return subscription_event(
        "customer.subscription.created",
        subscription_id=sub_id,
        customer_id=customer_id,
        status=status,
        created=int(clock.timestamp()),
        period_end=period_end or _period_end(),
        user_id=str(user.id) if user else None,
        cancel_at_period_end=cancel_at_period_end,
    )


def _pending(sub_id: str) -> dict[str, Any]:
    # An invoice of a subscription whose own event has not arrived: it waits (pending).
    invoice = simulate.invoice_object(
        customer_id="cus_wait",
        subscription_id=sub_id,
        price_id=PRO_PRICE,
        paid=True,
        period_start=clock.now(),
        period_end=clock.now() + timedelta(days=30),
    )
    return simulate.event("invoice.paid", invoice, created=int(clock.timestamp()))


def _ignored() -> dict[str, Any]:
    customer = {"id": "cus_other", "object": "customer"}
    return simulate.event("customer.created", customer, created=int(clock.timestamp()))


async def _post(client: httpx.AsyncClient, *events: dict[str, Any]) -> None:
    for event in events:
        response = await post_event(client, event)
        assert response.status_code == 200, response.text


def _rows(page: str, table: str) -> list[str]:
    found = re.search(rf'<table data-table="{table}">.*?</table>', page, re.S)
    assert found, table
    return re.findall(r"<tr data-.*?</tr>", found[0], re.S)


def _inbox(page: str) -> list[tuple[str, str]]:
    """(event id, outcome) of each inbox row shown."""
    return [
        (m[1], m[2])
        for row in _rows(page, "inbox")
        if (m := re.match(r'<tr data-event="([^"]+)" data-outcome="([^"]*)"', row))
    ]


def _pill_counts(page: str) -> dict[str, int]:
    pills = re.findall(r'data-outcome="([^"]+)" href="[^"]*">[^<]*<span class="count">(\d+)<', page)
    return {name: int(count) for name, count in pills}


def _token(page: str) -> str:
    found = CSRF.search(page)
    assert found
    return found[1]


def _back(page: str) -> str:
    found = re.search(r'name="back" value="([^"]*)"', page)
    assert found
    return html.unescape(found[1])


# --- /admin/billing ----------------------------------------------------------------------------


async def test_the_billing_page_lists_subscriptions_and_the_inbox(
    client: httpx.AsyncClient, admin: User, user: User
) -> None:
    end = _period_end(12)
    event = _subscription("sub_page", "cus_page", user=user, period_end=end)
    await _post(client, event)
    await sign_in(client, admin.email)
    page = await client.get("/admin/billing")
    assert page.status_code == 200, page.text
    assert '<a href="/admin/billing">Billing</a>' in page.text  # in the nav
    (row,) = _rows(page.text, "subscriptions")
    assert 'data-subscription="sub_page"' in row
    assert f'<a href="/admin/accounts/{user.id}">{user.email}</a>' in row
    assert "<td>pro</td>" in row
    assert 'class="status status-active"' in row
    assert f"<td>{end:%Y-%m-%d %H:%M:%S}</td>" in row
    assert "<td>no</td>" in row  # not canceling at the period end
    assert "<code>sub_page</code>" in row
    assert "<code>cus_page</code>" in row
    assert _inbox(page.text) == [(event["id"], "applied")]
    (event_row,) = _rows(page.text, "inbox")
    assert "customer.subscription.created" in event_row
    assert 'action="/admin/billing/inbox/' in event_row
    assert "<script" not in page.text


async def test_the_outcome_filter_shows_only_that_outcome_with_the_counts(
    client: httpx.AsyncClient, admin: User
) -> None:
    pending, unmatched, ignored = (
        _pending("sub_wait"),
        _subscription("sub_nobody", "cus_nobody"),
        _ignored(),
    )
    await _post(client, pending, unmatched, ignored)
    await sign_in(client, admin.email)
    everything = await client.get("/admin/billing")
    assert _inbox(everything.text) == [
        (ignored["id"], "ignored"),
        (unmatched["id"], "unmatched"),
        (pending["id"], "pending"),
    ]
    counts = _pill_counts(everything.text)
    assert counts == {
        "all": 3,
        "pending": 1,
        "unmatched": 1,
        "failed": 0,
        "applied": 0,
        "ignored": 1,
    }
    for outcome, event in (("unmatched", unmatched), ("pending", pending)):
        page = await client.get("/admin/billing", params={"outcome": outcome})
        assert _inbox(page.text) == [(event["id"], outcome)]
        assert f'class="pill active" data-outcome="{outcome}"' in page.text
    failed = await client.get("/admin/billing", params={"outcome": "failed"})
    assert _inbox(failed.text) == []
    assert "No events match." in failed.text
    unknown = await client.get("/admin/billing", params={"outcome": "stale"})
    assert unknown.status_code == 200
    assert "is not an outcome of the inbox" in unknown.text
    assert 'data-table="inbox"' not in unknown.text


async def test_the_inbox_filters_by_subscription(client: httpx.AsyncClient, admin: User) -> None:
    mine, other = _subscription("sub_a", "cus_a"), _subscription("sub_b", "cus_b")
    await _post(client, mine, other)
    await sign_in(client, admin.email)
    page = await client.get("/admin/billing", params={"subscription_id": "sub_a"})
    assert _inbox(page.text) == [(mine["id"], "unmatched")]


async def test_the_inbox_pages_with_next_before(
    client: httpx.AsyncClient, admin: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(billing_page, "PAGE_SIZE", 2)
    events = [_ignored() for _ in range(5)]
    await _post(client, *events)
    await sign_in(client, admin.email)
    seen: list[str] = []
    url: str | None = "/admin/billing?outcome=ignored"
    while url:
        page = await client.get(url)
        shown = _inbox(page.text)
        assert 0 < len(shown) <= 2
        seen += [event_id for event_id, _ in shown]
        older = re.search(r'<a rel="next" data-pager="inbox" href="([^"]+)"', page.text)
        url = html.unescape(older[1]) if older else None
        if url:
            assert "outcome=ignored" in url
            assert "before=" in url
    assert seen == [e["id"] for e in reversed(events)]


async def test_a_user_who_is_not_an_admin_gets_403(client: httpx.AsyncClient, user: User) -> None:
    event = _subscription("sub_x", "cus_x")
    await _post(client, event)
    await sign_in(client, user.email, next_="/account")
    page = await client.get("/admin/billing")
    assert page.status_code == 403
    assert "for administrators" in page.text
    assert "sub_x" not in page.text
    token = _token((await client.get("/account")).text)
    r = await client.post(f"/admin/billing/inbox/{event['id']}/reapply", data={"csrf_token": token})
    assert r.status_code == 403
    assert '<a href="/admin/billing">' not in (await client.get("/account")).text  # no nav link


async def test_signed_out_browsers_are_sent_to_sign_in(client: httpx.AsyncClient) -> None:
    r = await client.get("/admin/billing?outcome=failed")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fadmin%2Fbilling%3Foutcome%3Dfailed"


async def test_reapply_from_the_page_applies_an_event_once_its_user_is_known(
    client: httpx.AsyncClient, session: AsyncSession, admin: User, user: User
) -> None:
    event = _subscription("sub_later", "cus_later")
    await _post(client, event)
    await sign_in(client, admin.email)
    page = await client.get("/admin/billing", params={"outcome": "unmatched"})
    assert _inbox(page.text) == [(event["id"], "unmatched")]
    await billing_repo.link_customer(session, user.id, "cus_later")
    await session.commit()

    r = await client.post(
        f"/admin/billing/inbox/{event['id']}/reapply",
        data={"csrf_token": _token(page.text), "back": _back(page.text)},
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == f"/admin/billing?outcome=unmatched&reapplied={event['id']}"
    back = await client.get(r.headers["location"])
    assert f'data-reapplied="{event["id"]}" data-outcome="applied"' in back.text
    assert _inbox(back.text) == []  # no longer unmatched
    everything = await client.get("/admin/billing")
    assert _inbox(everything.text) == [(event["id"], "applied")]
    (row,) = _rows(everything.text, "subscriptions")
    assert f"/admin/accounts/{user.id}" in row


async def test_reapply_is_refused_without_the_csrf_token(
    client: httpx.AsyncClient, admin: User, user: User, session: AsyncSession
) -> None:
    event = _subscription("sub_csrf", "cus_csrf")
    await _post(client, event)
    await billing_repo.link_customer(session, user.id, "cus_csrf")
    await session.commit()
    await sign_in(client, admin.email)
    page = await client.get("/admin/billing")
    url = f"/admin/billing/inbox/{event['id']}/reapply"
    for data in ({}, {"csrf_token": "forged-token-that-is-long-enough"}):
        r = await client.post(url, data=data)
        assert r.status_code == 403
        assert "security token" in r.text
    assert _inbox((await client.get("/admin/billing")).text) == [(event["id"], "unmatched")]
    # The same form with its token does it.
    ok = await client.post(url, data={"csrf_token": _token(page.text)})
    assert ok.status_code == 303


async def test_reapply_of_an_unknown_event_is_a_404_page(
    client: httpx.AsyncClient, admin: User
) -> None:
    await sign_in(client, admin.email)
    token = _token((await client.get("/admin/billing")).text)
    r = await client.post("/admin/billing/inbox/evt_nope/reapply", data={"csrf_token": token})
    assert r.status_code == 404
    assert "evt_nope" in r.text


async def test_reapply_never_redirects_off_the_billing_page(
    client: httpx.AsyncClient, admin: User
) -> None:
    event = _ignored()
    await _post(client, event)
    await sign_in(client, admin.email)
    token = _token((await client.get("/admin/billing")).text)
    for back in ("//evil.example/x", "https://evil.example/", "/admin/requests?x=1"):
        r = await client.post(
            f"/admin/billing/inbox/{event['id']}/reapply",
            data={"csrf_token": token, "back": back},
        )
        assert r.headers["location"] == f"/admin/billing?reapplied={event['id']}"


# --- /account and the user page ------------------------------------------------------------------


def _summary(page: str) -> dict[str, str]:
    block = re.search(r'<div class="subscription".*?</div>', page, re.S)
    assert block, page
    fields = re.findall(r'data-field="(\w+)">([^<]*)<', block[0])
    return {name: " ".join(value.split()) for name, value in fields}


async def test_the_account_page_shows_plan_status_and_renewal(
    client: httpx.AsyncClient, user: User
) -> None:
    end = _period_end(25)
    await _post(client, _subscription("sub_mine", "cus_mine", user=user, period_end=end))
    await sign_in(client, user.email, next_="/account")
    page = await client.get("/account")
    assert page.status_code == 200
    assert _summary(page.text) == {
        "plan": "Pro",
        "status": "active",
        "renewal": f"renews on {end:%Y-%m-%d %H:%M:%S}",
    }


async def test_the_account_page_says_ends_on_when_the_subscription_will_not_renew(
    client: httpx.AsyncClient, user: User
) -> None:
    end = _period_end(9)
    event = _subscription(
        "sub_end", "cus_end", user=user, period_end=end, cancel_at_period_end=True
    )
    await _post(client, event)
    await sign_in(client, user.email, next_="/account")
    summary = _summary((await client.get("/account")).text)
    assert summary["status"] == "canceled"
    assert summary["renewal"] == f"ends on {end:%Y-%m-%d %H:%M:%S}"


async def test_a_free_user_sees_the_free_plan_and_no_date(
    client: httpx.AsyncClient, user: User
) -> None:
    await sign_in(client, user.email, next_="/account")
    assert _summary((await client.get("/account")).text) == {"plan": "Free", "status": "free"}


async def test_without_billing_the_account_page_says_so_instead_of_a_button(
    client: httpx.AsyncClient, user: User, session: AsyncSession
) -> None:
    await billing_repo.link_customer(session, user.id, "cus_off")
    await session.commit()
    await sign_in(client, user.email, next_="/account")
    page = await client.get("/account")
    assert 'data-billing-message="not_configured"' in page.text
    assert "Manage billing" not in page.text
    # A stale form posted anyway: the account page with the reason, not a 500.
    r = await client.post("/account/billing-portal", data={"csrf_token": _token(page.text)})
    assert r.status_code == 503
    assert "Billing is not configured on this server." in r.text


@pytest.fixture(scope="module")
def localstripe() -> Iterator[LocalStripe]:
    server = LocalStripe()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def stripe_app(
    localstripe: LocalStripe, make_settings: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, CheckoutStub]]:
    """The app with billing on: Stripe's API is the stub, forwarding to localstripe."""
    stub = CheckoutStub(localstripe.url)
    async with Served(stub.app) as stub_served:
        settings = make_settings(
            stripe_secret_key=STRIPE_KEY,
            stripe_api_base=stub_served.url,
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_max_network_retries=0,
            plans_file=write_plans_file(tmp_path),
        )
        async with RunningApp(create_app(settings)) as app:
            yield app, stub


async def test_manage_billing_redirects_to_the_customer_portal(
    stripe_app: tuple[FastAPI, CheckoutStub],
) -> None:
    app, stub = stripe_app
    async with app.state.sessionmaker() as session:
        user = await create_user(session)
    async with make_client(app) as client:
        await sign_in(client, user.email, next_="/account")
        before = await client.get("/account")
        assert 'data-billing-message="no_customer"' in before.text
        assert "Manage billing" not in before.text
        # Checkout creates the user's Stripe customer (in localstripe).
        checkout = await client.post(
            "/billing/checkout", json={"plan": "pro"}, headers=auth_headers(app, user)
        )
        assert checkout.status_code == 200, checkout.text
        page = await client.get("/account")
        assert 'data-form="billing-portal"' in page.text
        forged = await client.post("/account/billing-portal", data={})
        assert forged.status_code == 403
        r = await client.post("/account/billing-portal", data={"csrf_token": _token(page.text)})
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith("https://billing.stripe.com/p/session/")
    portals = [form for name, form, _ in stub.requests if name == "portal"]
    (portal,) = portals
    customer = next(form for name, form, _ in stub.requests if name == "checkout")["customer"]
    assert portal["customer"] == customer


async def test_stripe_down_shows_the_account_page_with_the_reason(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        stripe_secret_key=STRIPE_KEY,
        stripe_api_base=f"http://127.0.0.1:{free_port()}",
        stripe_max_network_retries=0,
        plans_file=write_plans_file(tmp_path),
    )
    async with RunningApp(create_app(settings)) as app, make_client(app) as client:
        async with app.state.sessionmaker() as session:
            user = await create_user(session)
            await billing_repo.link_customer(session, user.id, "cus_down")
            await session.commit()
        await sign_in(client, user.email, next_="/account")
        page = await client.get("/account")
        r = await client.post("/account/billing-portal", data={"csrf_token": _token(page.text)})
    assert r.status_code == 502
    assert "try again" in r.text
    assert 'role="alert"' in r.text


async def test_the_user_page_shows_the_subscription_and_customer(
    client: httpx.AsyncClient, admin: User, user: User, session: AsyncSession
) -> None:
    end = _period_end(15)
    await _post(client, _subscription("sub_u", "cus_u", user=user, period_end=end))
    await billing_repo.link_customer(session, user.id, "cus_u")
    await session.commit()
    await sign_in(client, admin.email)
    page = await client.get(f"/admin/accounts/{user.id}")
    assert _summary(page.text)["renewal"] == f"renews on {end:%Y-%m-%d %H:%M:%S}"
    assert "<code>cus_u</code>" in page.text
