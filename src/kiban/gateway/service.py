"""The gateway service: models, prices, providers and the ledger, started once per app; and what
every AI request asks of them (start a call, the grounding reserve, retrieval, its provider).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kiban.auth import Principal
from kiban.core.context import current_request_id
from kiban.gateway import grounding
from kiban.gateway.admission import Admission
from kiban.gateway.call import Call, Recorder
from kiban.gateway.catalog import (
    Catalog,
    ModelSpec,
    anthropic_configured,
    load_catalog,
    upstream_configured,
)
from kiban.gateway.pricing import PriceTable, load_prices
from kiban.gateway.providers.anthropic import ANTHROPIC_BASE_URL, AnthropicProvider
from kiban.gateway.providers.base import Provider
from kiban.gateway.providers.extractive import ExtractiveProvider
from kiban.gateway.providers.http import UpstreamPools
from kiban.gateway.providers.openai import OpenAIProvider
from kiban.gateway.tokenizer import count_text, encoding
from kiban.knowledge import RetrievedChunk, Retriever, retrieve
from kiban.settings import Settings
from kiban.usage import LedgerWriter

log = structlog.get_logger("kiban.gateway")


def content_policy(settings: Settings) -> Callable[[str | None], str | None]:
    """What the ledger keeps of a prompt or an answer, per ``KIBAN_GATEWAY_CONTENT_POLICY``."""
    if settings.gateway_content_policy == "none":
        return lambda text: None
    if settings.gateway_content_policy == "full":
        return lambda text: text
    limit = settings.gateway_content_max_chars
    return lambda text: None if text is None else text[:limit]


@dataclass(frozen=True)
class GatewayConfig:
    """The models and prices files, read and checked (at app creation, so bad files fail fast)."""

    catalog: Catalog
    prices: PriceTable

    @classmethod
    def load(cls, settings: Settings) -> GatewayConfig:
        return cls(load_catalog(settings), load_prices(settings.prices_file))


class Gateway:
    """Everything an AI request needs, created in the app's lifespan (``app.state.gateway``)."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        prices: PriceTable,
        providers: dict[str, Provider],
        ledger: LedgerWriter,
        admission: Admission,
        retriever: Retriever,
        sessionmaker: async_sessionmaker[AsyncSession],
        pools: UpstreamPools | None = None,
    ) -> None:
        self.settings = settings
        self.pools = pools  # the upstream connections shared by providers, closed last
        self.sessionmaker = sessionmaker
        self.admission = admission
        self.retriever = retriever
        self.catalog = catalog
        self.prices = prices
        self.providers = providers
        self.ledger = ledger
        self.content_policy = content_policy(settings)
        self._tasks: set[asyncio.Future[Any]] = set()
        self.recorder = Recorder(prices, ledger, self.content_policy, self.track)

    @classmethod
    def create(
        cls,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        config: GatewayConfig | None = None,
        *,
        admission: Admission,
        retriever: Retriever,
    ) -> Gateway:
        """Build the providers and the ledger writer (``ConfigurationError`` on bad files).

        ``admission`` is required: a gateway without quotas must say so (``OpenAdmission``),
        never fall back to it because the wiring was forgotten.
        """
        config = config or GatewayConfig.load(settings)
        catalog, prices = config.catalog, config.prices
        providers: dict[str, Provider] = {"extractive": ExtractiveProvider()}
        pools = UpstreamPools(settings)
        if upstream_configured(settings):
            providers["openai"] = OpenAIProvider(settings, catalog)
        if anthropic_configured(settings):
            key = settings.anthropic_api_key
            providers["anthropic"] = AnthropicProvider(
                settings,
                base_url=settings.anthropic_base_url or ANTHROPIC_BASE_URL,
                api_key=key.get_secret_value() if key else None,
                pools=pools,
            )
        for name, spec in catalog.models.items():
            if prices.price(name, spec.upstream_model) is None:
                log.warning("model_has_no_price", model=name, hint="its cost is recorded as NULL")
        encoding()  # load the BPE tables now, not on the first request
        ledger = LedgerWriter(
            sessionmaker,
            queue_size=settings.ledger_queue_size,
            batch_size=settings.ledger_batch_size,
            flush_interval=settings.ledger_flush_interval_seconds,
        )
        return cls(
            settings, catalog, prices, providers, ledger, admission, retriever, sessionmaker, pools
        )

    async def start(self) -> None:
        self.ledger.start()
        log.info("gateway_started", models=self.catalog.names, default_model=self.catalog.default)

    async def close(self) -> None:
        """Let settlements finish, write the ledger out, close upstream connections."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.ledger.close()
        for provider in self.providers.values():
            await provider.aclose()
        if self.pools is not None:
            await self.pools.aclose()

    def track(self, task: asyncio.Future[Any]) -> None:
        """Keep a background task alive until it is done (and awaited at shutdown)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def provider(self, spec: ModelSpec) -> Provider:
        return self.providers[spec.provider]

    def begin(
        self, request: Request, principal: Principal, endpoint: str, *, streamed: bool = False
    ) -> Call:
        """A new call for an authenticated request."""
        state = request.scope.setdefault("state", {})
        return Call(
            recorder=self.recorder,
            admission=self.admission,
            principal=principal,
            request_id=current_request_id() or state.get("request_id") or "",
            endpoint=endpoint,
            log_fields=state.setdefault("log_fields", {}),
            streamed=streamed,
        )

    def grounding_reserve(self, spec: ModelSpec) -> int:
        """Prompt tokens a grounded request may add (instructions + the context budget)."""
        return (
            count_text(grounding.INSTRUCTIONS, spec.encoding)
            + self.settings.gateway_context_token_budget
            + 16
        )

    async def retrieve(
        self, call: Call, query: str, *, top_k: int | None = None
    ) -> list[RetrievedChunk]:
        """The relevant chunks for a grounded request (empty: nothing relevant).

        In a read-only session of its own, closed before the model is asked: no pool connection
        is held for as long as the model takes.
        """
        async with self.sessionmaker() as session:
            retrieval = await retrieve(
                session,
                user_id=call.principal.user.id,
                query=query,
                top_k=top_k or self.settings.gateway_top_k,
                retriever=self.retriever,
            )
        return retrieval.relevant
