"""Alembic is the only schema path: the models and the migrations must agree on both databases."""

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
