"""The FastAPI application: `create_app(settings)` wires routers, middleware and the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from kiban import __version__
from kiban.auth.keys import load_keyring
from kiban.core.db import create_engine, create_sessionmaker
from kiban.core.errors import install_error_handlers
from kiban.core.logging import configure_logging
from kiban.core.middleware import RequestContextMiddleware
from kiban.settings import Settings

log = structlog.get_logger("kiban.app")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Raises ``ConfigurationError`` (with the fix) for an unusable configuration."""
    settings = settings or Settings()
    configure_logging(json=settings.json_logs, level=settings.log_level)
    keyring, key_note = load_keyring(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        if key_note:
            log.warning("jwt_key", note=key_note)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(engine.dispose)
            # Domain services start here, in dependency order; each registers its own cleanup.
            log.info(
                "started",
                version=__version__,
                env=settings.env,
                database=engine.url.render_as_string(),
            )
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
    )
    app.state.settings = settings
    app.state.keyring = keyring
    app.state.key_note = key_note
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(RequestContextMiddleware)

    from kiban import health

    app.include_router(health.router)
    return app
