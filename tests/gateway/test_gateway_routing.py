"""Deployments and routing, against two fake upstreams over HTTP with the ``openai`` SDK as the
client: shares by weight, failover under each fault before any byte reached the client, the
breaker's cooldown and its probe back, and the ledger (deployment, attempts) and quota exact on
every path."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from kiban.app import create_app
from kiban.billing.entitlements import calendar_month
from kiban.core import clock
from kiban.core.metrics import REGISTRY
from kiban.gateway import GatewayConfig
from kiban.models import UsageRecord
from kiban.models.user import Role
from kiban.settings import ConfigurationError, Settings
from tests.admin.test_dashboard_pages import sign_in
from tests.conftest import RunningApp, auth_headers, create_user, make_client
from tests.factories import ledger
from tests.gateway.gateway_helpers import DEFAULT_REPLY, FakeUpstream, Fault

HI = [{"role": "user", "content": "hi"}]
KEY_A, KEY_B = "sk-deployment-a", "sk-deployment-b"


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"
    return str(value)


def write_models(path: Path, deployments: dict[str, dict[str, Any]], routes: str) -> Path:
    lines = []
    for name, fields in deployments.items():
        lines.append(f'[deployments."{name}"]')
        lines += [f"{k} = {toml_value(v)}" for k, v in fields.items()]
        lines.append("")
    path.write_text("\n".join(lines) + "\n" + routes)
    return path


ROUTES = """
[models."gpt-4o-mini"]
deployments = ["a", "b"]
context_window = 128000
max_output_tokens = 16384

[models."gpt-4o"]
deployments = ["a"]
fallbacks = ["gpt-4o-mini"]
"""


@pytest.fixture
def plans_file(plans_file: Path) -> Path:
    """The gateway's test plans, with room for a hundred requests a minute."""
    text = plans_file.read_text().replace(
        "requests_per_minute = 20\n", "requests_per_minute = 1000\n"
    )
    plans_file.write_text(text)
    return plans_file


@pytest.fixture
def two(
    tmp_path: Path,
    upstream: FakeUpstream,
    upstream_b: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    make_settings: Callable[..., Settings],
    gateway_settings: dict[str, Any],
) -> Callable[..., RunningApp]:
    """An app whose models route to deployments ``a`` (``upstream``) and ``b`` (``upstream_b``)."""
    monkeypatch.setenv("KIBAN_TEST_KEY_A", KEY_A)
    monkeypatch.setenv("KIBAN_TEST_KEY_B", KEY_B)

    def make(
        a: dict[str, Any] | None = None, b: dict[str, Any] | None = None, **overrides: Any
    ) -> RunningApp:
        path = write_models(
            tmp_path / "models.toml",
            {
                "a": {
                    "base_url": upstream.base_url,
                    "api_key_env": "KIBAN_TEST_KEY_A",
                    **(a or {}),
                },
                "b": {
                    "base_url": upstream_b.base_url,
                    "api_key_env": "KIBAN_TEST_KEY_B",
                    **(b or {}),
                },
            },
            ROUTES,
        )
        settings = {
            **gateway_settings,
            "models_file": path,
            "upstream_cooldown_seconds": 60.0,
            **overrides,
        }
        return RunningApp(create_app(make_settings(**settings)))

    return make


@asynccontextmanager
async def sdk(app: FastAPI) -> AsyncIterator[tuple[openai.AsyncOpenAI, Any]]:
    async with app.state.sessionmaker() as session:
        user = await create_user(session)
    token = auth_headers(app, user)["Authorization"].split()[1]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        yield (
            openai.AsyncOpenAI(
                api_key=token, base_url="http://testserver/v1", max_retries=0, http_client=http
            ),
            user,
        )


async def ask(
    client: openai.AsyncOpenAI, *, stream: bool = False, model: str = "gpt-4o-mini"
) -> str:
    """One chat completion through kiban (streamed or not); its text."""
    if not stream:
        completion = await client.chat.completions.create(model=model, messages=HI)  # type: ignore[arg-type]
        return completion.choices[0].message.content or ""
    chunks = await client.chat.completions.create(model=model, messages=HI, stream=True)  # type: ignore[arg-type]
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


async def assert_quota_matches_ledger(app: FastAPI, user: Any, records: list[UsageRecord]) -> None:
    start, _ = calendar_month(clock.now())
    state = await app.state.admission.store.state(user.id, start)
    assert (state.used_tokens, state.reserved_tokens) == (sum(r.total_tokens for r in records), 0)


def breaker(name: str) -> float | None:
    return REGISTRY.get_sample_value("kiban_deployment_breaker_state", {"deployment": name})


# --- routing by weight ---------------------------------------------------------------------------


async def test_traffic_is_shared_by_weight(
    two: Callable[..., RunningApp], upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    async with two(a={"weight": 3}, b={"weight": 1}) as app, sdk(app) as (client, user):
        for _ in range(40):
            assert await ask(client) == DEFAULT_REPLY
        records = await ledger(app)
    served = Counter(r.deployment for r in records)
    assert served["a"] + served["b"] == 40
    assert 0.6 <= served["a"] / 40 <= 0.9  # 3:1, with room to spare
    assert (len(upstream.requests), len(upstream_b.requests)) == (served["a"], served["b"])
    # Each deployment is called with its own key.
    assert {r.headers["authorization"] for r in upstream.requests} == {f"Bearer {KEY_A}"}
    assert {r.headers["authorization"] for r in upstream_b.requests} == {f"Bearer {KEY_B}"}
    assert {(r.attempts, r.provider, r.status) for r in records} == {(1, "openai", "ok")}
    await assert_quota_matches_ledger(app, user, records)


# --- failover ------------------------------------------------------------------------------------


FAULTS = {
    "refused": None,  # deployment a points at a port nothing listens on
    "429_retry_after": Fault.error(429, retry_after=30),
    "500": Fault.error(500),
    "hang": Fault.hang(3),
    "stream_cut_before_first_chunk": Fault.cut(-1),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_every_request_succeeds_while_one_deployment_fails_every_request(
    two: Callable[..., RunningApp], upstream: FakeUpstream, upstream_b: FakeUpstream, fault: str
) -> None:
    a: dict[str, Any] = {"timeout_seconds": 0.3}  # a deployment's own timeout: the hang's cure
    if fault == "refused":
        a["base_url"] = f"http://127.0.0.1:{closed_port()}/v1"
    else:
        upstream.always = FAULTS[fault]
    streamed = fault == "stream_cut_before_first_chunk"
    async with two(a=a) as app, sdk(app) as (client, user):
        answers = [await ask(client, stream=streamed or n % 2 == 1) for n in range(20)]
        records = await ledger(app)
    assert answers == [DEFAULT_REPLY] * 20  # 100% success
    assert len(records) == 20
    assert {(r.status, r.deployment) for r in records} == {("ok", "b")}
    failed_attempts = sum(r.attempts - 1 for r in records)
    # The breaker opens after 3 failures in a row (a Retry-After opens it at once).
    assert failed_attempts == (1 if fault == "429_retry_after" else 3)
    if fault != "refused":
        assert len(upstream.requests) == failed_attempts
    assert len(upstream_b.requests) == 20
    assert breaker("a") == 2  # open
    await assert_quota_matches_ledger(app, user, records)


async def test_a_stream_cut_after_its_first_chunk_is_not_retried(
    two: Callable[..., RunningApp], upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    # Once a chunk reached the client, another deployment's answer would be a second answer:
    # the failure is the client's to see, and the record says which deployment failed.
    upstream.script(Fault.cut(after_chunks=2))
    async with two(b={"weight": 0.001}) as app, sdk(app) as (client, user):
        with pytest.raises(openai.APIError):
            await ask(client, stream=True)
        [record] = await ledger(app)
    assert (record.status, record.deployment, record.attempts) == ("error", "a", 1)
    assert upstream_b.requests == []
    await assert_quota_matches_ledger(app, user, [record])


async def test_the_fallback_model_is_tried_after_its_deployments(
    two: Callable[..., RunningApp], upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    upstream.always = Fault.error(503)
    async with two(b={"weight": 10}, upstream_max_retries=1) as app, sdk(app) as (client, user):
        assert await ask(client, model="gpt-4o") == DEFAULT_REPLY
        [record] = await ledger(app)
    # gpt-4o (only on a): two tries; then gpt-4o-mini, whose healthy deployment b answers.
    assert [r.body["model"] for r in upstream.requests] == ["gpt-4o", "gpt-4o"]
    assert (record.model, record.deployment, record.attempts) == ("gpt-4o-mini", "b", 3)
    await assert_quota_matches_ledger(app, user, [record])


async def test_a_request_refused_for_its_content_is_not_failed_over(
    two: Callable[..., RunningApp], upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    upstream.script(Fault.error(400))
    async with two(b={"weight": 0.001}) as app, sdk(app) as (client, _):
        with pytest.raises(openai.BadRequestError):
            await ask(client)
        [record] = await ledger(app)
    assert (record.status, record.deployment, record.attempts) == ("error", "a", 1)
    assert upstream_b.requests == []


async def test_when_every_deployment_fails_the_record_names_the_last_one_tried(
    two: Callable[..., RunningApp], upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    upstream.always = upstream_b.always = Fault.error(500)
    async with two(upstream_max_retries=1) as app, sdk(app) as (client, user):
        with pytest.raises(openai.APIStatusError) as failure:
            await ask(client)
        [record] = await ledger(app)
    assert failure.value.status_code == 502
    assert (record.status, record.error_code, record.attempts) == ("error", "upstream_error", 4)
    assert record.deployment in ("a", "b")
    assert (len(upstream.requests), len(upstream_b.requests)) == (2, 2)
    await assert_quota_matches_ledger(app, user, [record])


# --- cooldown and recovery ----------------------------------------------------------------------


async def test_a_cooled_down_deployment_takes_under_5_percent_of_attempts(
    two: Callable[..., RunningApp], upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    upstream.always = Fault.error(500)
    async with two() as app, sdk(app) as (client, _):
        for _ in range(100):
            assert await ask(client) == DEFAULT_REPLY
        records = await ledger(app)
    attempts = sum(r.attempts for r in records)
    assert len(upstream.requests) == 3  # until the breaker opened; none while it cools down
    assert len(upstream.requests) / attempts < 0.05
    assert {r.deployment for r in records} == {"b"}


async def test_a_recovered_deployment_is_probed_back_into_the_rotation(
    two: Callable[..., RunningApp], upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    upstream.always = Fault.error(500)
    async with two(upstream_cooldown_seconds=0.5) as app, sdk(app) as (client, _):
        for _ in range(6):
            await ask(client)
        assert breaker("a") == 2
        upstream.always = None  # a is back
        await asyncio.sleep(0.6)  # the cooldown passes
        assert breaker("a") == 1  # half-open: the next request may probe it
        for _ in range(6):
            await ask(client)
        records = await ledger(app)
    assert breaker("a") == 0
    later = records[6:]
    assert Counter(r.deployment for r in later)["a"] >= 2  # the probe, then its share again
    assert {r.status for r in records} == {"ok"}


async def test_a_failed_probe_opens_the_breaker_again_for_longer(
    two: Callable[..., RunningApp], upstream: FakeUpstream
) -> None:
    upstream.always = Fault.error(500)
    async with two(upstream_cooldown_seconds=0.2) as app, sdk(app) as (client, _):
        for _ in range(6):
            await ask(client)
        await asyncio.sleep(0.25)
        for _ in range(2):  # the rotation comes back to a on the second: its probe fails
            await ask(client)
        health = app.state.gateway.router.members["a"].health
        assert breaker("a") == 2
        assert health.cooldown == pytest.approx(0.4)
        assert len(upstream.requests) == 4


# --- the concurrency cap -------------------------------------------------------------------------


async def test_a_deployment_never_carries_more_than_its_cap(
    two: Callable[..., RunningApp], upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    upstream.latency_ms = upstream_b.latency_ms = 100
    async with (
        two(a={"max_concurrency": 1}, b={"max_concurrency": 2}) as app,
        sdk(app) as (client, user),
    ):
        peak: Counter[str] = Counter()
        router = app.state.gateway.router

        async def watch() -> None:
            while True:
                for name, member in router.members.items():
                    peak[name] = max(peak[name], member.health.in_flight)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        answers = await asyncio.gather(*(ask(client, stream=n % 2 == 0) for n in range(9)))
        watcher.cancel()
        records = await ledger(app)
    assert answers == [DEFAULT_REPLY] * 9
    assert peak["a"] <= 1
    assert peak["b"] <= 2
    assert {r.status for r in records} == {"ok"}
    await assert_quota_matches_ledger(app, user, records)


# --- the implicit deployment ---------------------------------------------------------------------


async def test_openai_base_url_alone_is_the_deployment_named_openai(
    app: FastAPI, upstream: FakeUpstream
) -> None:
    async with sdk(app) as (client, _):
        assert await ask(client) == DEFAULT_REPLY
        [record] = await ledger(app)
    assert (record.deployment, record.attempts, record.provider) == ("openai", 1, "openai")
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-test-upstream"


async def test_the_extractive_engine_records_no_deployment(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI
) -> None:
    response = await client.post(
        "/ai/test", headers=user_headers, json={"prompt": "What?", "model": "extractive"}
    )
    assert response.status_code == 200
    [record] = await ledger(app)
    assert (record.deployment, record.attempts) == (None, 0)


# --- configuration errors name the field ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "routes", "message"),
    [
        ({"kind": "magic"}, ROUTES, r"\[deployments.a\] kind = 'magic'"),
        ({"base_url": "ftp://x"}, ROUTES, r"\[deployments.a\] base_url"),
        ({"weight": 0}, ROUTES, r"\[deployments.a\] weight = 0"),
        ({"max_concurrency": 0}, ROUTES, r"\[deployments.a\] max_concurrency"),
        ({"api_key_env": "KIBAN_TEST_UNSET_KEY"}, ROUTES, "KIBAN_TEST_UNSET_KEY"),
        ({"timeout": 3}, ROUTES, "unknown field 'timeout'"),
        ({"model_ids": {"gpt-4o-mini": 3}}, ROUTES, r"\[deployments.a\] model_ids"),
        ({}, '[models.m]\ndeployments = ["nowhere"]\n', r"\[models.m\] deployments: 'nowhere'"),
        ({}, '[models.m]\ndeployments = "a"\n', r"\[models.m\] deployments"),
    ],
)
def test_a_bad_deployment_refuses_to_start_naming_the_field(
    tmp_path: Path, fields: dict[str, Any], routes: str, message: str
) -> None:
    path = write_models(
        tmp_path / "models.toml",
        {
            "a": {"base_url": "http://127.0.0.1:9/v1", **fields},
            "b": {"base_url": "http://127.0.0.1:9/v1"},
        },
        routes,
    )
    with pytest.raises(ConfigurationError, match=message):
        GatewayConfig.load(Settings(_env_file=None, models_file=path, openai_api_key=None))


def test_a_deployment_of_an_unknown_kind_is_refused_naming_it(tmp_path: Path) -> None:
    path = write_models(
        tmp_path / "models.toml",
        {"gem": {"kind": "gemini", "base_url": "https://example.invalid"}},
        '[models."gem-1"]\ndeployments = ["gem"]\n',
    )
    with pytest.raises(ConfigurationError, match=r"\[deployments.gem\] kind"):
        GatewayConfig.load(Settings(_env_file=None, models_file=path, openai_api_key=None))


async def test_the_redis_quota_backend_records_the_deployment_and_attempts(
    two: Callable[..., RunningApp], upstream: FakeUpstream, redis_url: str
) -> None:
    upstream.always = Fault.error(500)
    async with two(redis_url=redis_url, quota_backend="redis") as app, sdk(app) as (client, user):
        for _ in range(4):
            assert await ask(client) == DEFAULT_REPLY
        records = await ledger(app)
    # Which requests met 'a' first depends on the round robin's turn, not on the backend.
    assert sorted((r.deployment, r.attempts) for r in records) == [("b", 1)] * 2 + [("b", 2)] * 2
    await assert_quota_matches_ledger(app, user, records)


# --- where health is shown -----------------------------------------------------------------------


async def test_metrics_and_the_dashboard_show_each_deployments_health(
    two: Callable[..., RunningApp], upstream: FakeUpstream
) -> None:
    def attempts(name: str, outcome: str) -> float:
        labels = {"deployment": name, "outcome": outcome}
        return REGISTRY.get_sample_value("kiban_deployment_attempts_total", labels) or 0.0

    before = attempts("a", "error"), attempts("b", "ok")
    upstream.always = Fault.error(500)
    async with two() as app, sdk(app) as (client, _):
        for _ in range(6):
            await ask(client)
        async with app.state.sessionmaker() as session:
            admin = await create_user(session, role=Role.ADMIN)
        async with make_client(app) as browser:
            assert (await sign_in(browser, admin.email)).status_code == 303
            page = (await browser.get("/admin")).text
            metrics = (await browser.get("/metrics")).text
    assert (attempts("a", "error") - before[0], attempts("b", "ok") - before[1]) == (3, 6)
    assert 'data-deployment="a" data-state="open"' in page
    assert 'data-deployment="b" data-state="closed"' in page
    assert 'kiban_deployment_breaker_state{deployment="a"} 2.0' in metrics
    assert "kiban_deployment_attempt_duration_seconds_bucket" in metrics


async def test_streams_cut_midway_take_a_deployment_out_of_the_rotation(
    two: Callable[..., RunningApp], upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    # Each cut stream is the client's failure (a chunk had reached it), but the deployment that
    # cut it is counted as failing: after three, the others carry its traffic.
    upstream.always = Fault.cut(after_chunks=2)
    async with two() as app, sdk(app) as (client, user):
        outcomes = []
        for _ in range(10):
            try:
                outcomes.append(await ask(client, stream=True) == DEFAULT_REPLY)
            except openai.APIError:
                outcomes.append(False)
        records = await ledger(app)
    assert outcomes.count(False) == 3
    assert all(outcomes[5:])
    assert [r.deployment for r in records if r.status == "error"] == ["a"] * 3
    assert breaker("a") == 2
    await assert_quota_matches_ledger(app, user, records)


async def test_a_deployment_sends_its_own_id_for_a_model(
    two: Callable[..., RunningApp],
    upstream: FakeUpstream,
    upstream_b: FakeUpstream,
    tmp_path: Path,
) -> None:
    # An Azure deployment name, an Ollama tag: what the model is called on that deployment.
    prices = tmp_path / "prices.toml"
    prices.write_text('[prices."llama3.1:8b"]\ninput = "0"\noutput = "0"\n')
    async with (
        two(a={"model_ids": {"gpt-4o-mini": "llama3.1:8b"}}, prices_file=prices) as app,
        sdk(app) as (client, _),
    ):
        for _ in range(2):
            await ask(client, stream=True)
        records = await ledger(app)
    assert [r.body["model"] for r in upstream.requests] == ["llama3.1:8b"]
    assert [r.body["model"] for r in upstream_b.requests] == ["gpt-4o-mini"]
    assert {r.model for r in records} == {"gpt-4o-mini"}  # recorded as kiban's model
    # Priced as what answered: the local model's price (0, from the prices file) on a.
    costs = {r.deployment: r.estimated_cost for r in records}
    assert costs["a"] == 0
    assert costs["b"] is not None
    assert costs["b"] > 0


async def test_when_both_ask_to_wait_the_request_waits_as_asked_within_the_deadline(
    two: Callable[..., RunningApp], upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    upstream.script(Fault.error(429, retry_after=0.3))
    upstream_b.script(Fault.error(429, retry_after=0.3))
    async with two() as app, sdk(app) as (client, _):
        assert await ask(client) == DEFAULT_REPLY
        [record] = await ledger(app)
    times = sorted(r.at for r in upstream.requests + upstream_b.requests)
    assert len(times) == 3
    assert times[2] - times[0] >= 0.29  # Retry-After honoured, not a short backoff
    assert record.attempts == 3
    assert record.deployment in ("a", "b")


async def test_a_wait_past_the_deadline_fails_at_once_with_the_upstreams_retry_after(
    two: Callable[..., RunningApp], upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    upstream.script(Fault.error(429, retry_after=60))
    upstream_b.script(Fault.error(429, retry_after=60))
    async with two() as app, sdk(app) as (client, user):
        with pytest.raises(openai.APIStatusError) as failure:
            await ask(client)
        [record] = await ledger(app)
    assert failure.value.status_code == 503
    assert failure.value.response.headers["retry-after"] == "60"
    assert (record.status, record.error_code, record.attempts) == (
        "error",
        "upstream_unavailable",
        2,
    )
    await assert_quota_matches_ledger(app, user, [record])
