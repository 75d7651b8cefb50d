"""`kiban doctor` says whether Redis keeps the settle stream safe."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from kiban.core.doctor import Finding
from kiban.doctor import run_doctor
from kiban.settings import Settings


async def _stream_check(settings: Settings) -> list[Finding]:
    return dict(await run_doctor(settings))["Redis quota store and its settle stream"]


async def test_the_database_backend_has_no_stream(make_settings: Callable[..., Settings]) -> None:
    findings = await _stream_check(make_settings(quota_backend="database"))
    assert [f.status for f in findings] == ["ok"]


@pytest.mark.redis
async def test_redis_without_an_append_only_file_is_a_warning(
    make_settings: Callable[..., Settings], redis_url: str, settle_stream: str
) -> None:
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        aof = (await redis.config_get("appendonly"))["appendonly"]
        await redis.xadd(settle_stream, {"r": "x"})
    finally:
        await redis.aclose()
    settings = make_settings(
        quota_backend="redis", redis_url=redis_url, quota_settle_stream=settle_stream
    )
    findings = await _stream_check(settings)
    titles = [(f.status, f.title) for f in findings]
    assert ("ok", f"1 settlements in {settle_stream} wait to be drained") in titles
    assert (("warn", "Redis has no append-only file") in titles) == (aof != "yes")
