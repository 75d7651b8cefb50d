"""Gateway fixtures: the fake OpenAI-compatible upstream (real HTTP on loopback) and ledger helpers.

The root conftest's ``settings`` is overridden so that every gateway test's app has an upstream:
the ``openai`` provider is driven only through ``tests/fake_upstream.py`` over HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kiban
from kiban.core.metrics import REGISTRY
from kiban.settings import Settings
from tests.fake_anthropic import FakeAnthropic
from tests.fake_upstream import DEFAULT_REPLY, FakeUpstream


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def second_fake_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def _fresh(server: FakeUpstream) -> FakeUpstream:
    server.reset()
    server.reply = DEFAULT_REPLY
    server.latency_ms = 0.0
    server.chunk_delay_ms = 0.0
    server.cached_tokens = 0
    server.report_usage = True
    server.tool_call = None
    return server


@pytest.fixture
def upstream(fake_server: FakeUpstream) -> Iterator[FakeUpstream]:
    """The fake upstream, with no scripted faults and default behaviour, for this test."""
    yield _fresh(fake_server)
    fake_server.reset()


@pytest.fixture
def upstream_b(second_fake_server: FakeUpstream) -> Iterator[FakeUpstream]:
    """A second fake upstream (another deployment), fresh for this test."""
    yield _fresh(second_fake_server)
    second_fake_server.reset()


GATEWAY_SETTINGS: dict[str, Any] = {
    "openai_api_key": "sk-test-upstream",
    "upstream_timeout_seconds": 2.0,
    "upstream_connect_timeout_seconds": 1.0,
    "upstream_deadline_seconds": 6.0,
    "upstream_max_retries": 2,
    "upstream_backoff_seconds": 0.01,
    "upstream_backoff_max_seconds": 0.05,
    "gateway_content_policy": "full",
    "ledger_flush_interval_seconds": 0.01,
}


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    """The shipped plans, with every model allowed on the free plan (the gateway's tests are not
    about plans; the quota tests are)."""
    shipped = (Path(kiban.__file__).parent / "billing" / "plans.toml").read_text()
    path = tmp_path / "plans.toml"
    path.write_text(re.sub(r"^models = \[.*\]$", 'models = ["*"]', shipped, count=1, flags=re.M))
    return path


@pytest.fixture
def gateway_settings(upstream: FakeUpstream, plans_file: Path) -> dict[str, Any]:
    return {"openai_base_url": upstream.base_url, "plans_file": plans_file, **GATEWAY_SETTINGS}


@pytest.fixture
def settings(make_settings: Callable[..., Settings], gateway_settings: dict[str, Any]) -> Settings:
    return make_settings(**gateway_settings)


@pytest.fixture(autouse=True)
def _no_ledger_drops() -> Iterator[None]:
    before = REGISTRY.get_sample_value("kiban_ledger_records_dropped_total") or 0.0
    yield
    after = REGISTRY.get_sample_value("kiban_ledger_records_dropped_total") or 0.0
    assert after == before, "the ledger dropped records"


@pytest.fixture(scope="session")
def fake_anthropic_server() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture
def anthropic_upstream(fake_anthropic_server: FakeAnthropic) -> Iterator[FakeAnthropic]:
    """The fake Anthropic server, with no scripted faults and default behaviour, for this test."""
    fake_anthropic_server.reset()
    yield fake_anthropic_server
    fake_anthropic_server.reset()
