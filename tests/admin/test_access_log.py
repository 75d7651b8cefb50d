"""One structured access-log line per request: request id, user, route template, status, timing."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from kiban.models import User


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.msg for r in caplog.records if r.name == "kiban.access" and isinstance(r.msg, dict)]


async def test_each_request_logs_one_line_with_its_identity_and_timing(
    client: httpx.AsyncClient,
    admin: User,
    admin_headers: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kiban.access")
    r = await client.get(
        "/admin/analytics/summary", headers={**admin_headers, "X-Request-ID": "trace-42"}
    )
    assert r.status_code == 200
    (line,) = _access_lines(caplog)
    assert line["request_id"] == "trace-42"
    assert line["user_id"] == str(admin.id)
    assert line["route"] == "/admin/analytics/summary"
    assert line["path"] == "/admin/analytics/summary"
    assert line["status"] == 200
    assert line["method"] == "GET"
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] >= 0


async def test_failed_requests_are_logged_with_their_status(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kiban.access")
    await client.get("/admin/analytics/summary")
    (line,) = _access_lines(caplog)
    assert line["status"] == 401
    assert line["user_id"] is None
    assert len(line["request_id"]) == 32
