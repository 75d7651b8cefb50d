"""GET /metrics: access control, the Prometheus format, and HTTP metrics by route template."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from kiban.app import create_app
from kiban.core.metrics import REGISTRY
from kiban.settings import Settings
from tests.conftest import RunningApp

FAMILIES = {
    "kiban_http_requests",
    "kiban_http_request_duration_seconds",
    "kiban_ai_requests",
    "kiban_ai_tokens",
    "kiban_ai_cost_usd",
    "kiban_ai_time_to_first_token_seconds",
    "kiban_upstream_errors",
    "kiban_upstream_retries",
    "kiban_ledger_queue_depth",
    "kiban_ledger_records_written",
    "kiban_ledger_records_dropped",
    "kiban_quota_rejections",
}


def _client(app: FastAPI, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_expose_every_family_in_prometheus_format(client: httpx.AsyncClient) -> None:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(r.text)}
    assert names >= FAMILIES


async def test_http_requests_are_counted_by_route_template_and_status(
    client: httpx.AsyncClient,
) -> None:
    route = "/admin/accounts/{user_id}"
    labels = {"method": "GET", "route": route, "status": "303"}
    before = _sample("kiban_http_requests_total", **labels)
    before_hist = _sample("kiban_http_request_duration_seconds_count", method="GET", route=route)
    missing = "00000000-0000-4000-8000-000000000000"
    # Signed out: the dashboard page redirects to the sign-in page.
    assert (await client.get(f"/admin/accounts/{missing}")).status_code == 303
    assert _sample("kiban_http_requests_total", **labels) == before + 1
    assert (
        _sample("kiban_http_request_duration_seconds_count", method="GET", route=route)
        == before_hist + 1
    )
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    before = _sample("kiban_http_requests_total", **unmatched)
    await client.get("/no/such/path/12345")
    assert _sample("kiban_http_requests_total", **unmatched) == before + 1
    text = (await client.get("/metrics")).text
    assert "/no/such/path" not in text  # raw paths never become labels
    assert missing not in text


async def test_metrics_refuse_other_addresses(app: FastAPI) -> None:
    async with _client(app, "203.0.113.9") as c:
        r = await c.get("/metrics")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "metrics_forbidden"


async def test_metrics_token_opens_them_to_any_address(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(metrics_allowed_networks=[], metrics_token="scrape-token-0123456789")
    async with RunningApp(create_app(settings)) as app, _client(app) as c:
        assert (await c.get("/metrics")).status_code == 403  # even localhost: no networks
        bad = await c.get("/metrics", headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 403
        ok = await c.get("/metrics", headers={"Authorization": "Bearer scrape-token-0123456789"})
        assert ok.status_code == 200


async def test_allowed_networks_are_cidr(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(metrics_allowed_networks="10.0.0.0/8, 192.168.1.7")
    async with RunningApp(create_app(settings)) as app:
        async with _client(app, "10.20.30.40") as c:
            assert (await c.get("/metrics")).status_code == 200
        async with _client(app, "192.168.1.8") as c:
            assert (await c.get("/metrics")).status_code == 403


def test_a_bad_network_is_refused_at_start_up(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValidationError, match="KIBAN_METRICS_ALLOWED_NETWORKS"):
        make_settings(metrics_allowed_networks="10.0.0.0/33")
