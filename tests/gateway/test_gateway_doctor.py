"""``kiban doctor`` checks each deployment over HTTP: reachable, key accepted, models listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiban.core.doctor import DoctorContext
from kiban.gateway.doctor import check_deployments
from kiban.settings import Settings
from tests.fake_anthropic import FakeAnthropic
from tests.gateway.gateway_helpers import FakeUpstream, Fault
from tests.gateway.test_gateway_routing import closed_port, write_models


def models(tmp_path: Path, base_url: str, upstream_model: str = "fake") -> Path:
    return write_models(
        tmp_path / "models.toml",
        {"local": {"base_url": base_url, "api_key_env": "KIBAN_TEST_DOCTOR_KEY"}},
        f'[models.m]\ndeployments = ["local"]\nupstream_model = "{upstream_model}"\n',
    )


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIBAN_TEST_DOCTOR_KEY", "sk-doctor")


async def check(path: Path) -> list[tuple[str, str]]:
    settings = Settings(_env_file=None, models_file=path, openai_api_key=None, default_model="m")
    return [(f.status, f.title) for f in await check_deployments(DoctorContext(settings))]


async def test_a_healthy_deployment_is_ok_with_its_key_sent(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    [(status, title)] = await check(models(tmp_path, upstream.base_url))
    assert status == "ok"
    assert "'local'" in title
    assert "key accepted, 1 models listed" in title


async def test_an_unreachable_deployment_fails(tmp_path: Path) -> None:
    [(status, title)] = await check(models(tmp_path, f"http://127.0.0.1:{closed_port()}/v1"))
    assert (status, title.endswith("unreachable")) == ("fail", True)


async def test_a_refused_key_fails_naming_its_variable(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    upstream.script(Fault.error(401))
    path = models(tmp_path, upstream.base_url)
    settings = Settings(_env_file=None, models_file=path, openai_api_key=None, default_model="m")
    [finding] = await check_deployments(DoctorContext(settings))
    assert (finding.status, finding.fix) == ("fail", "check KIBAN_TEST_DOCTOR_KEY")


async def test_a_routed_model_the_deployment_does_not_list_is_a_warning(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    [(status, title)] = await check(models(tmp_path, upstream.base_url, "gpt-9"))
    assert status == "warn"
    assert "does not list gpt-9" in title


async def test_a_bad_models_file_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    path = write_models(tmp_path / "models.toml", {"x": {"base_url": "nope"}}, "")
    [(status, title)] = await check(path)
    assert (status, title) == ("fail", "the models file is misconfigured")


async def test_an_anthropic_deployment_is_probed_the_anthropic_way(
    tmp_path: Path, anthropic_upstream: FakeAnthropic
) -> None:
    path = write_models(
        tmp_path / "models.toml",
        {
            "claude": {
                "kind": "anthropic",
                "base_url": anthropic_upstream.base_url,
                "api_key_env": "KIBAN_TEST_DOCTOR_ANTHROPIC_KEY",
            }
        },
        '[models.c]\ndeployments = ["claude"]\nupstream_model = "claude-haiku-4-5"\n',
    )
    settings = Settings(_env_file=None, models_file=path, openai_api_key=None, default_model="c")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KIBAN_TEST_DOCTOR_ANTHROPIC_KEY", anthropic_upstream.key or "")
        [ok] = await check_deployments(DoctorContext(settings))
        assert (ok.status, "key accepted, 3 models listed" in ok.title) == ("ok", True)
        patch.setenv("KIBAN_TEST_DOCTOR_ANTHROPIC_KEY", "sk-ant-wrong")
        [refused] = await check_deployments(DoctorContext(settings))
    assert (refused.status, refused.fix) == ("fail", "check KIBAN_TEST_DOCTOR_ANTHROPIC_KEY")
