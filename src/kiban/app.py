"""The FastAPI application: `create_app(settings)` wires routers, middleware and the lifespan."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi.telemetry import TelemetryConfig

from kiban import __version__
from kiban.auth.api_keys import wait_for_touches
from kiban.auth.key_cache import running_key_cache
from kiban.auth.keys import load_keyring
from kiban.billing.plans import load_catalog
from kiban.billing.stripe_client import StripeClient
from kiban.billing.webhooks import WEBHOOK_MAX_BYTES
from kiban.core.body_limit import BodyLimitMiddleware
from kiban.core.db import create_engine, create_sessionmaker
from kiban.core.errors import install_error_handlers
from kiban.core.logging import configure_logging
from kiban.core.middleware import RequestContextMiddleware
from kiban.gateway.service import Gateway, GatewayConfig
from kiban.knowledge.service import start as start_knowledge
from kiban.quota import LIMIT_HEADERS, cost_bound_from, running_admission
from kiban.settings import Settings

log = structlog.get_logger("kiban.app")


_NO_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}


_frozen = False


def _freeze_startup_objects() -> None:
    """Move what start-up built out of the garbage collector's reach, once per process.

    It (about 200,000 objects: routes, models, tables, the tokenizer and the analyzer) lives as
    long as the server, yet every full collection walked it: a 100 ms pause under load, in
    the p99 and the streams' time to first token. Frozen, a full collection walks only what
    requests create. Once per process: a test process builds many apps and must still collect
    those it drops.
    """
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Raises ``ConfigurationError`` (with the fix) for an unusable configuration."""
    settings = settings or Settings()
    configure_logging(json=settings.json_logs, level=settings.log_level)
    keyring, key_note = load_keyring(settings)
    # A bad plans file or KIBAN_STRIPE_PRICES refuses to start, naming the field or the entry.
    plans = load_catalog(settings.plans_file, settings.stripe_prices)
    gateway_config = GatewayConfig.load(settings)  # models and prices files, checked now

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        if key_note:
            log.warning("jwt_key", note=key_note)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(engine.dispose)
            stack.push_async_callback(wait_for_touches)  # API keys' last-used writes, then dispose
            app.state.api_key_cache = await stack.enter_async_context(running_key_cache(settings))
            app.state.admission = await stack.enter_async_context(
                running_admission(
                    settings,
                    plans,
                    cost_bound=cost_bound_from(gateway_config.catalog, gateway_config.prices),
                )
            )
            # Domain services start here, in dependency order; each registers its own cleanup.
            app.state.stripe = StripeClient.from_settings(settings)
            if app.state.stripe is not None:
                stack.push_async_callback(app.state.stripe.aclose)
            app.state.retriever = await start_knowledge(settings, app.state.sessionmaker)
            stack.push_async_callback(app.state.retriever.close)
            app.state.gateway = Gateway.create(
                settings,
                app.state.sessionmaker,
                gateway_config,
                admission=app.state.admission,
                retriever=app.state.retriever,
            )
            await app.state.gateway.start()
            stack.push_async_callback(app.state.gateway.close)
            log.info(
                "started",
                version=__version__,
                env=settings.env,
                database=engine.url.render_as_string(),
            )
            _freeze_startup_objects()
            yield
        log.info("stopped")

    app = FastAPI(
        title="kiban",
        version=__version__,
        description=(
            "Accounts, billing, a metered AI gateway and grounded answers: the foundation "
            "behind an AI product."
        ),
        lifespan=lifespan,
        # FastAPI's OpenTelemetry spans, metrics and logs only when asked for: left on, they look
        # the providers up in the environment on every request (4% of the gateway's CPU under a
        # burst), and kiban's own /metrics and structured logs are the default.
        telemetry=None if settings.opentelemetry else _NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.keyring = keyring
    app.state.plans = plans
    app.state.key_note = key_note
    install_error_handlers(app)
    # Middleware added first runs innermost: the size limit inside CORS (so a browser can read
    # its 413), both inside the request context (request id, access log).
    app.add_middleware(
        BodyLimitMiddleware,
        default=settings.max_request_bytes,
        limits={
            # Every file at its limit, plus the multipart framing and form fields.
            "/ai/upload": settings.knowledge_max_files * settings.knowledge_max_file_bytes
            + 1024 * 1024,
            "/billing/webhook": WEBHOOK_MAX_BYTES,
        },
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After", *LIMIT_HEADERS],
        )
    app.add_middleware(RequestContextMiddleware)

    from kiban import health
    from kiban.admin import account as admin_account
    from kiban.admin import billing_page as admin_billing
    from kiban.admin import dashboard as admin_dashboard
    from kiban.admin import metrics as ops_metrics
    from kiban.admin import router as admin_analytics
    from kiban.admin import users as admin_users
    from kiban.admin.pages import STATIC_DIR as ADMIN_STATIC_DIR
    from kiban.auth import router as auth
    from kiban.billing import admin_router as billing_admin
    from kiban.billing import router as billing
    from kiban.gateway import messages_router, v1_router
    from kiban.gateway import router as ai_router
    from kiban.knowledge import router as knowledge
    from kiban.quota import router as quota_router

    # The gateway's routers first: FastAPI tries routes in order, and they take the traffic.
    app.include_router(v1_router.router)
    app.include_router(messages_router.router)
    app.include_router(ai_router.router)
    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(admin_users.router)
    app.include_router(admin_analytics.router)
    app.include_router(ops_metrics.router)
    app.include_router(admin_dashboard.router)
    app.include_router(admin_billing.router)
    app.include_router(admin_account.router)
    app.mount("/admin/static", StaticFiles(directory=ADMIN_STATIC_DIR), name="admin-static")
    app.include_router(billing.router)
    app.include_router(billing_admin.router)
    app.include_router(quota_router.router)
    app.include_router(knowledge.router)
    return app
