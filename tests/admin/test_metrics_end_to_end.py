"""End to end: a real AI request through the gateway shows up in /metrics, the access log and
the analytics summary."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kiban.core.metrics import REGISTRY


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_an_ai_request_is_counted_logged_and_summarized(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kiban.access")
    before = await client.get("/metrics")
    written_before = REGISTRY.get_sample_value("kiban_ledger_records_written_total") or 0.0
    # The registry is the process's: other tests may have dropped records on purpose before.
    dropped_before = REGISTRY.get_sample_value("kiban_ledger_records_dropped_total") or 0.0
    r = await client.post(
        "/ai/test", json={"prompt": "What is kiban?", "model": "extractive"}, headers=admin_headers
    )
    assert r.status_code == 200, r.text
    body = r.json()

    # The ledger writer is off the request path: wait (briefly) for the record.
    for _ in range(100):
        if (REGISTRY.get_sample_value("kiban_ledger_records_written_total") or 0) > written_before:
            break
        await asyncio.sleep(0.02)
    after = (await client.get("/metrics")).text

    key: Any = None
    counts = _samples(after, "kiban_ai_requests_total")
    old = _samples(before.text, "kiban_ai_requests_total")
    changed = {k: v - old.get(k, 0.0) for k, v in counts.items() if v != old.get(k, 0.0)}
    assert len(changed) == 1
    ((key, delta),) = changed.items()
    assert delta == 1
    labels = dict(key)
    assert labels["model"] == body["model"]
    assert labels["endpoint"] == "ai_test"
    dropped = REGISTRY.get_sample_value("kiban_ledger_records_dropped_total") or 0.0
    assert dropped == dropped_before

    lines = [
        rec.msg
        for rec in caplog.records
        if rec.name == "kiban.access"
        and isinstance(rec.msg, dict)
        and rec.msg["path"] == "/ai/test"
    ]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == body["request_id"]
    assert line["model"] == body["model"]
    assert line["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert line["status"] == 200

    summary = (await client.get("/admin/analytics/summary", headers=admin_headers)).json()
    assert summary["requests"] == 1
    assert summary["by_status"][labels["status"]] == 1
    assert summary["prompt_tokens"] == body["usage"]["prompt_tokens"]
