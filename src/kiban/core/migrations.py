"""Alembic, driven from code: `kiban migrate`, /readyz and the tests use the same functions."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import kiban


def migrations_dir() -> Path:
    """The Alembic script directory: packaged in the wheel, or the source tree's `migrations/`."""
    package_dir = Path(kiban.__file__).resolve().parent
    for candidate in (package_dir / "_migrations", package_dir.parents[1] / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("kiban's migrations directory was not found")


def alembic_config() -> Config:
    """Alembic's configuration; the connection is handed in through ``config.attributes``."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


@dataclass(frozen=True)
class MigrationStatus:
    current: tuple[str, ...]
    heads: tuple[str, ...]

    @property
    def at_head(self) -> bool:
        return set(self.current) == set(self.heads)

    def as_dict(self) -> dict[str, Any]:
        return {"current": list(self.current), "head": list(self.heads), "at_head": self.at_head}


@lru_cache(maxsize=1)
def script_heads() -> tuple[str, ...]:
    """The newest revisions shipped with this code (read once: they cannot change at run time)."""
    return tuple(sorted(ScriptDirectory.from_config(alembic_config()).get_heads()))


def migration_status(connection: Connection) -> MigrationStatus:
    """Where the database's schema is, against the newest migrations."""
    current = MigrationContext.configure(connection).get_current_heads()
    return MigrationStatus(tuple(sorted(current)), script_heads())


def _upgrade(connection: Connection, target: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, target)


async def upgrade(engine: AsyncEngine, target: str = "heads") -> None:
    """Apply migrations up to `target` on the engine's database."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, target)
