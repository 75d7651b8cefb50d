"""Quota's ``kiban doctor`` check: with the Redis backend, whether Redis keeps the settle stream
(settlements and their ledger records wait there until they are drained into the database)."""

from __future__ import annotations

from redis.asyncio import Redis

from kiban.core.doctor import DoctorContext, Finding, doctor_check

_AOF_FIX = "set appendonly yes and appendfsync everysec (or always) in redis.conf"
_EVICTION_FIX = "set maxmemory-policy noeviction (or a volatile-* policy) in redis.conf"


@doctor_check
async def check_redis_settle_stream(ctx: DoctorContext) -> list[Finding]:
    """Redis quota store and its settle stream."""
    settings = ctx.settings
    uses_redis = settings.quota_backend == "redis" or (
        settings.quota_backend == "auto" and settings.redis_url
    )
    if not uses_redis or not settings.redis_url:
        return [Finding("ok", "quotas are in the database: no settle stream")]
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        config = {
            **await redis.config_get("appendonly"),
            **await redis.config_get("appendfsync"),
            **await redis.config_get("maxmemory-policy"),
        }
        waiting = await redis.xlen(settings.quota_settle_stream)
    finally:
        await redis.aclose()
    findings: list[Finding] = []
    if config.get("appendonly") != "yes":
        findings.append(
            Finding(
                "warn",
                "Redis has no append-only file",
                "a Redis crash loses every settlement not yet drained into the database: "
                "answered calls without a ledger record",
                _AOF_FIX,
            )
        )
    elif config.get("appendfsync") == "no":
        findings.append(
            Finding("warn", "Redis leaves its append-only file's fsync to the OS", "", _AOF_FIX)
        )
    policy = str(config.get("maxmemory-policy") or "")
    if policy.startswith("allkeys"):
        findings.append(
            Finding(
                "fail",
                f"Redis may evict any key (maxmemory-policy {policy})",
                "the settle stream has no TTL and must never be evicted",
                _EVICTION_FIX,
            )
        )
    findings.append(
        Finding(
            "ok" if waiting < 1000 else "warn",
            f"{waiting} settlements in {settings.quota_settle_stream} wait to be drained",
        )
    )
    return findings
