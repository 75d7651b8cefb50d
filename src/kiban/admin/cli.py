"""``kiban admin rebuild-rollups``."""

from __future__ import annotations

import asyncio

import typer

from kiban.core.db import create_engine, create_sessionmaker, session_scope
from kiban.settings import Settings
from kiban.usage import rebuild

admin_app = typer.Typer(help="Analytics upkeep.", no_args_is_help=True)


@admin_app.command("rebuild-rollups")
def rebuild_rollups() -> None:
    """Recompute the analytics rollups from the usage ledger (after a restore or an import)."""
    settings = Settings()

    async def run() -> int:
        engine = create_engine(settings.database_url)
        try:
            async with session_scope(create_sessionmaker(engine)) as session:
                return await rebuild(session)
        finally:
            await engine.dispose()

    typer.echo(f"rollups rebuilt from {asyncio.run(run()):,} ledger records")
