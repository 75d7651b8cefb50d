"""Starting quota enforcement with the app: the store the settings ask for, its expiry sweeper,
and (Redis) the drainer of its settle stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import structlog

from kiban.billing import PlanCatalog
from kiban.core import clock
from kiban.gateway import Catalog, PriceTable
from kiban.quota.admission import CostBound, QuotaAdmission
from kiban.quota.store import QuotaStore, RedisQuotaStore, SqlQuotaStore
from kiban.settings import ConfigurationError, Settings

log = structlog.get_logger("kiban.quota")


async def _sweep_forever(store: QuotaStore, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            released = await store.release_expired(clock.now())
            if released:
                log.warning("quota_reservations_expired", released=released)
        except Exception:  # a database hiccup must not end the sweeper
            log.exception("quota_sweep_failed")


def cost_bound_from(catalog: Catalog, prices: PriceTable) -> CostBound:
    """The cost upper bound of a request from the gateway's models and prices files."""

    def bound(model: str, prompt_tokens: int, completion_tokens: int) -> Decimal | None:
        spec = catalog.models.get(model)
        price = prices.price(model, spec.upstream_model) if spec else prices.price(model)
        return price.cost(prompt_tokens, completion_tokens) if price else None

    return bound


def build_store(settings: Settings) -> QuotaStore:
    """The quota store the settings ask for: Redis when configured (or forced), else the DB."""
    pool = max(2, min(settings.database_pool_size, 10))
    use_redis = settings.quota_backend == "redis" or (
        settings.quota_backend == "auto" and settings.redis_url
    )
    if use_redis:
        if not settings.redis_url:
            raise ConfigurationError("KIBAN_QUOTA_BACKEND=redis needs KIBAN_REDIS_URL")
        store = RedisQuotaStore.from_urls(
            settings.redis_url,
            settings.database_url,
            pool_size=pool,
            stream=settings.quota_settle_stream,
        )
        store.drainer.claim_idle_ms = int(settings.quota_stream_claim_idle_seconds * 1000)
        return store
    return SqlQuotaStore.from_url(settings.database_url, pool_size=pool)


@contextlib.asynccontextmanager
async def running_admission(
    settings: Settings,
    catalog: PlanCatalog,
    *,
    cost_bound: CostBound | None = None,
) -> AsyncIterator[QuotaAdmission]:
    """The app's ``QuotaAdmission`` with its store and expiry sweeper, closed on exit.

    Entitlements are read through the store's own small autocommit pool: one round trip, and
    never a second connection from the app's pool while the request holds one.
    """
    store = build_store(settings)
    admission = QuotaAdmission(
        store,
        catalog,
        store.read_sessions,
        grace=timedelta(days=settings.billing_past_due_grace_days),
        reservation_ttl=timedelta(seconds=settings.quota_reservation_ttl_seconds),
        cost_bound=cost_bound,
    )
    await store.start()  # Redis: the settle stream's drainer
    sweeper = asyncio.create_task(_sweep_forever(store, settings.quota_sweep_interval_seconds))
    try:
        yield admission
    finally:
        await admission.aclose()  # settlements being retried: a last chance before the store closes
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await store.close()  # Redis: drains what is left of the settle stream first
