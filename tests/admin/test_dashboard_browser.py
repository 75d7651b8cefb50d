"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright).

Served by uvicorn on a free loopback port; the figures on the cards are computed here from the
seeded records, and no page may log a console error or fail a request (the favicon included).
Set ``KIBAN_DASHBOARD_SCREENSHOT=path.png`` to keep the screenshot (docs/img/dashboard.png is made
this way).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.billing import repository as billing_repo
from kiban.core import clock
from kiban.models import UsageRecord, User
from kiban.settings import Settings
from tests.billing.conftest import (
    WEBHOOK_SECRET,
    post_event,
    subscription_event,
    write_plans_file,
)
from tests.conftest import DEFAULT_PASSWORD, create_user, make_client, skip_unless_required
from tests.factories import make_records, write_records

if TYPE_CHECKING:
    from playwright.async_api import ConsoleMessage, Frame, Page, Request, Response

pytestmark = pytest.mark.browser


def _chromium() -> str | None:
    configured = os.environ.get("KIBAN_CHROMIUM", "/usr/bin/chromium")
    return configured if Path(configured).exists() else shutil.which("chromium")


CHROMIUM = _chromium()
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture
def settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    # Webhooks accepted, so that the billing page has subscriptions and inbox events to show.
    return make_settings(
        stripe_webhook_secret=WEBHOOK_SECRET, plans_file=write_plans_file(tmp_path)
    )


@pytest.fixture
async def served(app: FastAPI) -> AsyncIterator[str]:
    """The app (lifespan already running) served by uvicorn on a free loopback port."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  (uvicorn offers no "started" event)
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    if CHROMIUM is None:
        skip_unless_required("Chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        instance = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
        )
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture
async def seeded(session: AsyncSession, admin: User) -> list[UsageRecord]:
    """A week of varied traffic from a few users, ending a minute ago."""
    users = [admin.id]
    for name in ("hana", "kenji", "alice", "bob"):
        users.append((await create_user(session, email=f"{name}@example.com")).id)
    now = clock.now()
    records = make_records(400, [*users, users[1], users[1]], hours=7 * 24 - 1)
    first = min(r.created_at for r in records)
    for r in records:
        r.created_at = now - timedelta(days=7) + (r.created_at - first) + timedelta(minutes=30)
        r.created_at = min(r.created_at, now - timedelta(minutes=1))
    await write_records(session, records)
    return records


def _usd(value: Decimal) -> str:
    return f"${value:,.2f}" if value >= 10 else f"${value:,.4f}"


def png_is_blank(data: bytes) -> bool:
    """Whether a PNG is (nearly) one flat colour: few distinct bytes in its decoded scanlines."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    pixels = zlib.decompress(idat)
    return len(set(pixels)) < 16


ICON_WAIT_SECONDS = 5.0


def _is_icon(url: str) -> bool:
    return "favicon" in url.rsplit("/", 1)[-1]


class Problems:
    """What the browser reported going wrong on a page: console errors, script errors, requests
    that failed or were answered with an error status."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.found: list[str] = []
        self.icons: list[int] = []  # the status of each icon the pages fetched
        self._icon_done = asyncio.Event()
        page.on("console", self._console)
        page.on("pageerror", lambda error: self._add(f"script error: {error}"))
        page.on("requestfailed", self._failed)
        page.on("requestfinished", self._finished)
        page.on("response", self._response)
        page.on("framenavigated", self._navigated)

    def _add(self, problem: str) -> None:
        self.found.append(f"{problem} (on {self.page.url})")

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self._add(f"console error: {message.text} [{message.location.get('url')}]")

    def _failed(self, request: Request) -> None:
        self._add(f"request failed: {request.method} {request.url} ({request.failure})")
        if _is_icon(request.url):
            self._icon_done.set()

    def _finished(self, request: Request) -> None:
        if _is_icon(request.url):
            self._icon_done.set()

    def _response(self, response: Response) -> None:
        if _is_icon(response.url):
            self.icons.append(response.status)
        if response.status >= 400:
            self._add(f"HTTP {response.status}: {response.request.method} {response.url}")

    def _navigated(self, frame: Frame) -> None:
        if frame == self.page.main_frame:
            self._icon_done.clear()

    async def settled(self) -> list[str]:
        """The problems so far, once the page is done with its icon.

        Chromium asks for the icon after the page has loaded, so its error would come after the
        page looked finished. Waiting for that one request is quicker than waiting for the
        network to be idle (half a second of silence), which stays the fallback should the
        browser keep the icon of an earlier page.
        """
        try:
            await asyncio.wait_for(self._icon_done.wait(), ICON_WAIT_SECONDS)
        except TimeoutError:
            await self.page.wait_for_load_state("networkidle")
        return self.found


async def test_admin_signs_in_sees_figures_filters_and_screenshots(
    served: str, browser: object, admin: User, seeded: list[UsageRecord], tmp_path: Path
) -> None:
    from playwright.async_api import Browser, expect

    assert isinstance(browser, Browser)
    page = await browser.new_page(viewport={"width": 1360, "height": 900})
    page.set_default_timeout(15_000)
    problems = Problems(page)

    # Signed out: the dashboard sends the browser to the sign-in form.
    await page.goto(f"{served}/admin")
    assert "/login" in page.url
    assert await problems.settled() == []
    await page.fill("input[name=email]", admin.email)
    await page.fill("input[name=password]", DEFAULT_PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{served}/admin")

    requests = len(seeded)
    tokens = sum(r.total_tokens for r in seeded)
    cost = sum((r.estimated_cost for r in seeded if r.estimated_cost is not None), Decimal(0))
    errors = sum(1 for r in seeded if r.status == "error")
    await expect(page.locator("[data-metric=users] .value")).to_have_text("5")
    await expect(page.locator("[data-metric=requests] .value")).to_have_text(f"{requests:,}")
    await expect(page.locator("[data-metric=tokens] .value")).to_have_text(f"{tokens:,}")
    await expect(page.locator("[data-metric=cost] .value")).to_have_text(_usd(cost))
    await expect(page.locator("[data-metric=error-rate] .value")).to_have_text(
        f"{errors / requests * 100:.1f}%"
    )
    assert await page.locator("svg.chart").count() >= 5
    assert await page.locator("[data-table=top-users] tbody tr").count() == 5
    assert await problems.settled() == []

    shot = await page.screenshot(full_page=True)
    await asyncio.to_thread((tmp_path / "dashboard.png").write_bytes, shot)
    assert len(shot) > 20_000
    assert not png_is_blank(shot)
    if target := os.environ.get("KIBAN_DASHBOARD_SCREENSHOT"):
        await asyncio.to_thread(Path(target).write_bytes, shot)

    # One user's page, from the top users.
    await page.click("[data-table=top-users] tbody tr:first-child a")
    await page.wait_for_url(f"{served}/admin/accounts/*")
    await expect(page.locator("[data-metric=quota]")).to_be_visible()
    assert await problems.settled() == []

    # The usage log, filtered to errors through the form.
    await page.click("a[href='/admin/requests']")
    await page.wait_for_url(f"{served}/admin/requests")
    assert await problems.settled() == []
    await page.select_option("select[name=status]", "error")
    await page.click("form[data-form=filters] button[type=submit]")
    await page.wait_for_url("**/admin/requests?*status=error*")
    rows = page.locator("table[data-table=usage-log] tbody tr")
    await expect(rows).to_have_count(min(errors, 50))
    statuses = await rows.evaluate_all("rs => rs.map(r => r.dataset.status)")
    assert set(statuses) == {"error"}
    assert await problems.settled() == []

    # The admin's own account page.
    await page.click("a[href='/account']")
    await page.wait_for_url(f"{served}/account")
    await expect(page.locator("[data-table=api-keys]")).to_be_visible()
    assert await problems.settled() == []

    # The pages fetched their icon; /favicon.ico (asked for by browsers regardless) is an image
    # this browser decodes.
    assert problems.icons
    assert set(problems.icons) == {200}
    size = await page.evaluate(
        """async () => {
            const icon = new Image();
            icon.src = "/favicon.ico";
            await icon.decode();
            return [icon.naturalWidth, icon.naturalHeight];
        }"""
    )
    assert min(size) > 0
    assert problems.found == []


async def test_admin_billing_page_filters_and_reapplies_without_errors(
    served: str, browser: object, app: FastAPI, admin: User, session: AsyncSession
) -> None:
    from playwright.async_api import Browser, expect

    assert isinstance(browser, Browser)
    hana = await create_user(session, email="hana@example.com")
    period_end = clock.now() + timedelta(days=20)
    events = [
        subscription_event(
            "customer.subscription.created",
            subscription_id=sub_id,
            customer_id=customer_id,
            status="active",
            created=int(clock.timestamp()),
            period_end=period_end,
            user_id=user_id,
        )
        for sub_id, customer_id, user_id in (
            ("sub_hana", "cus_hana", str(hana.id)),
            ("sub_later", "cus_later", None),
        )
    ]
    async with make_client(app) as client:
        for event in events:
            assert (await post_event(client, event)).status_code == 200
    # The unmatched subscription's customer turns out to be hana's: re-applying matches it.
    await billing_repo.link_customer(session, hana.id, "cus_later")
    await session.commit()

    page = await browser.new_page(viewport={"width": 1360, "height": 900})
    page.set_default_timeout(15_000)
    problems = Problems(page)
    await page.goto(f"{served}/login?next=/admin/billing")
    await page.fill("input[name=email]", admin.email)
    await page.fill("input[name=password]", DEFAULT_PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{served}/admin/billing")
    await expect(page.locator("[data-table=subscriptions] tbody tr")).to_have_count(2)
    await expect(page.locator("[data-table=inbox] tbody tr")).to_have_count(2)
    assert await problems.settled() == []

    await page.click("[data-filter=outcome] a[data-outcome=unmatched]")
    await page.wait_for_url("**/admin/billing?outcome=unmatched")
    rows = page.locator("[data-table=inbox] tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-event", events[1]["id"])
    assert await problems.settled() == []

    await rows.first.locator("button", has_text="Re-apply").click()
    await page.wait_for_url("**/admin/billing?outcome=unmatched&reapplied=*")
    await expect(page.locator("[data-reapplied]")).to_have_attribute("data-outcome", "applied")
    await expect(page.locator("[data-table=inbox] tbody tr td.empty")).to_be_visible()
    assert await problems.settled() == []

    # hana's page, from the subscriptions table.
    await page.click("nav a[href='/admin/billing']")
    await page.wait_for_url(f"{served}/admin/billing")
    await page.click(f"[data-table=subscriptions] a[href='/admin/accounts/{hana.id}'] >> nth=0")
    await page.wait_for_url(f"{served}/admin/accounts/{hana.id}")
    await expect(page.locator("[data-billing=active]")).to_be_visible()
    assert await problems.settled() == []
    assert problems.found == []
