"""The unit of work: nothing a failed request wrote survives, savepoints included."""

from sqlalchemy import func, select

from kiban.core.db import create_engine, create_sessionmaker, session_scope
from kiban.models import User


async def test_savepoint_before_any_write_does_not_commit_on_its_own(database_url: str) -> None:
    # On SQLite a SAVEPOINT that opens the transaction commits when released; the engine must
    # open the real transaction first so the outer rollback still undoes the nested block.
    engine = create_engine(database_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        try:
            async with session_scope(sessionmaker) as session:
                await session.execute(select(func.count()).select_from(User))
                async with session.begin_nested():
                    session.add(User(email="nested@example.com", password_hash="x"))
                raise RuntimeError("the request fails after the nested block")
        except RuntimeError:
            pass
        async with sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(User)) == 0
    finally:
        await engine.dispose()
