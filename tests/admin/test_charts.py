"""The server-side charts: counts get whole-number ticks, money and milliseconds may not."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.admin.charts import Line, line_chart, y_ticks
from kiban.core import clock
from kiban.models import User
from tests.admin.test_dashboard_pages import sign_in
from tests.factories import make_records, write_records

ROUND_STEPS = {m * 10**e for e in range(14) for m in (1, 2, 5)} | {25 * 10**e for e in range(13)}


def y_tick_labels(svg: str, title: str) -> list[str]:
    """The value axis's labels of the chart titled ``title``, bottom to top."""
    chart = re.search(rf'<svg [^>]*aria-label="{re.escape(title)}">.*?</svg>', svg, re.S)
    assert chart, title
    return re.findall(r'class="tick" text-anchor="end">([^<]*)</text>', chart[0])


@given(st.integers(min_value=0, max_value=10**12))
def test_count_ticks_are_round_whole_numbers_reaching_the_peak(peak: int) -> None:
    ticks = y_ticks(peak, integer=True)
    assert all(t.is_integer() for t in ticks)
    assert ticks[0] == 0
    assert ticks[-1] >= peak
    assert 2 <= len(ticks) <= 5
    step = ticks[1] - ticks[0]
    assert int(step) in ROUND_STEPS
    assert ticks == [step * k for k in range(len(ticks))]
    assert ticks[-2] < peak or peak == 0  # no empty step above the peak


def test_small_counts_get_one_tick_per_request_and_money_keeps_fractions() -> None:
    assert y_ticks(2, integer=True) == [0, 1, 2]
    assert y_ticks(0, integer=True) == [0, 1]
    assert y_ticks(7, integer=True) == [0, 2, 4, 6, 8]
    assert y_ticks(2) == [0, 0.5, 1, 1.5, 2]  # a cost or latency axis may be fractional


def test_a_count_chart_labels_each_tick_once() -> None:
    now = clock.now()
    xs = [now - timedelta(hours=h) for h in (2, 1, 0)]
    svg = line_chart("Requests", xs, [Line("requests", [1, 3, 2])], integer=True)
    assert y_tick_labels(svg, "Requests") == ["0", "1", "2", "3"]


async def test_the_dashboards_requests_chart_has_whole_number_ticks(
    client: httpx.AsyncClient, admin: User, session: AsyncSession
) -> None:
    # Two requests in one hour: the old axis read 0, 0.5, 1, 1.5, 2 (shown as 0, 0, 1, 2, 2).
    records = make_records(2, [admin.id], hours=1)
    for r in records:
        r.created_at = clock.now() - timedelta(minutes=5)
    await write_records(session, records)
    await sign_in(client, admin.email)
    page = await client.get("/admin?range=24h")
    assert page.status_code == 200
    assert y_tick_labels(page.text, "Requests") == ["0", "1", "2"]
