"""Alembic is the only schema path: the models and the migrations must agree on both databases."""

import ast
from pathlib import Path

from sqlalchemy.ext.asyncio import create_async_engine

from kiban.core.migrations import migration_status
from kiban.models.schema import compare_models


async def test_models_and_migrations_agree(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(compare_models)
            status = await conn.run_sync(migration_status)
    finally:
        await engine.dispose()
    assert status.at_head
    assert diff == [], f"models and migrations differ; add a migration: {diff}"


def test_migrations_import_nothing_from_kiban() -> None:
    """A migration keeps frozen copies of what it computes: live code may change, it may not."""
    versions = Path(__file__).resolve().parents[2] / "migrations" / "versions"
    offenders = []
    for path in sorted(versions.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "kiban"]
    assert offenders == []
