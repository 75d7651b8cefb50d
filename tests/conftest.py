"""Test fixtures: real databases (a SQLite file, and PostgreSQL when configured), the real app.

Every test that takes ``database_url`` (directly or through ``app``/``client``/``session``) runs
once per backend: ``sqlite`` always, ``postgres`` when ``KIBAN_TEST_DATABASE_URL`` is set
(otherwise it is skipped, loudly). Each test sees an empty, fully migrated database.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from kiban.app import create_app
from kiban.auth.passwords import hash_password
from kiban.auth.verify import issue_access_token
from kiban.core.db import create_engine
from kiban.core.migrations import upgrade
from kiban.models import Role, User
from kiban.settings import Settings

TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"
PG_URL = os.environ.get("KIBAN_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("KIBAN_TEST_REDIS_URL")
DEFAULT_PASSWORD = "correct horse battery staple"
# CI sets this: a backend that would be skipped is a failure there, never a silent skip.
REQUIRE_ALL = os.environ.get("KIBAN_TEST_REQUIRE_ALL") == "1"


def skip_unless_required(reason: str) -> None:
    """Skip (loudly) where a service is not configured; fail instead when CI requires everything."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (KIBAN_TEST_REQUIRE_ALL=1)")
    pytest.skip(reason)


def pytest_report_header() -> list[str]:
    lines = []
    lines.append(
        f"postgres: {PG_URL or 'NOT SET (KIBAN_TEST_DATABASE_URL): postgres tests skipped'}"
    )
    lines.append(f"redis: {REDIS_URL or 'NOT SET (KIBAN_TEST_REDIS_URL): redis tests skipped'}")
    return lines


# --- databases ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("db") / "template.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await upgrade(engine)
    async with engine.connect() as conn:
        await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    await engine.dispose()
    return path


class PostgresDatabase:
    """This run's own PostgreSQL database: created and migrated on first use, dropped at the end."""

    def __init__(self) -> None:
        self.url: str | None = None
        self._name = f"kiban_test_{uuid.uuid4().hex[:10]}"

    async def get(self) -> str:
        if not PG_URL:
            skip_unless_required("KIBAN_TEST_DATABASE_URL is not set")
        if self.url is None:
            admin = create_async_engine(make_url(PG_URL), isolation_level="AUTOCOMMIT")
            async with admin.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{self._name}"'))
            await admin.dispose()
            url = make_url(PG_URL).set(database=self._name).render_as_string(hide_password=False)
            engine = create_engine(url)
            await upgrade(engine)
            await engine.dispose()
            self.url = url
        return self.url

    async def drop(self) -> None:
        if self.url is None or not PG_URL:
            return
        admin = create_async_engine(make_url(PG_URL), isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)'))
        await admin.dispose()


@pytest.fixture(scope="session")
async def postgres_database() -> AsyncIterator[PostgresDatabase]:
    database = PostgresDatabase()
    yield database
    await database.drop()


async def _truncate_postgres(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        tables = (
            (
                await conn.execute(
                    text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                        "AND tablename <> 'alembic_version'"
                    )
                )
            )
            .scalars()
            .all()
        )
        if tables:
            names = ", ".join(f'"{t}"' for t in tables)
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_template: Path,
    postgres_database: PostgresDatabase,
) -> AsyncIterator[str]:
    """An empty, migrated database for this test, on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "kiban.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    url = await postgres_database.get()
    await _truncate_postgres(url)
    yield url


@pytest.fixture
def redis_url() -> str:
    if not REDIS_URL:
        skip_unless_required("KIBAN_TEST_REDIS_URL is not set")
    assert REDIS_URL
    return REDIS_URL


# --- the app -----------------------------------------------------------------------------------


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for the test database; keyword arguments override fields."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "env": "test",
            "database_url": database_url,
            "secret_key": TEST_SECRET,
            "dev_secret_file": tmp_path / ".kiban-secret",
            # BM25 only unless a test asks for an embedder: the local model embeds a few chunks a
            # second on two cores, and most tests upload documents they never search by meaning.
            "embedder": "none",
            "_env_file": None,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


class RunningApp:
    """Runs an app's lifespan around a test."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._cm: Any = None

    async def __aenter__(self) -> FastAPI:
        self._cm = self.app.router.lifespan_context(self.app)
        await self._cm.__aenter__()
        return self.app

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(*exc)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with RunningApp(create_app(settings)) as running:
        yield running


@pytest.fixture
async def served(app: FastAPI) -> AsyncIterator[str]:
    """The app served by uvicorn on a free loopback port (disconnect tests need a real socket)."""
    import asyncio

    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


def make_client(app: FastAPI, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", **kwargs
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(app) as c:
        yield c


@pytest.fixture
async def session(app: FastAPI) -> AsyncIterator[AsyncSession]:
    """A session on the app's database, for factories and assertions (commit explicitly)."""
    async with app.state.sessionmaker() as s:
        yield s


# --- factories ---------------------------------------------------------------------------------

_hash_cache: dict[str, str] = {}


def _hashed(password: str) -> str:
    # Argon2 is slow on purpose; hash each distinct test password once.
    if password not in _hash_cache:
        _hash_cache[password] = hash_password(password)
    return _hash_cache[password]


async def create_user(
    session: AsyncSession,
    *,
    email: str | None = None,
    password: str = DEFAULT_PASSWORD,
    role: Role = Role.USER,
    is_active: bool = True,
    **fields: Any,
) -> User:
    """A committed user."""
    user = User(
        email=email or f"user-{uuid.uuid4().hex[:8]}@example.com",
        password_hash=_hashed(password),
        role=role,
        is_active=is_active,
        **fields,
    )
    session.add(user)
    await session.commit()
    return user


def auth_headers(app: FastAPI, user: User) -> dict[str, str]:
    """An Authorization header with a fresh access token for the user."""
    token = issue_access_token(app.state.keyring, app.state.settings, user.id)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def user(session: AsyncSession) -> User:
    return await create_user(session)


@pytest.fixture
async def admin(session: AsyncSession) -> User:
    return await create_user(session, role=Role.ADMIN)


@pytest.fixture
def user_headers(app: FastAPI, user: User) -> dict[str, str]:
    return auth_headers(app, user)


@pytest.fixture
def admin_headers(app: FastAPI, admin: User) -> dict[str, str]:
    return auth_headers(app, admin)


@pytest.fixture(autouse=True)
def _no_dev_secret_in_repo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Settings() built inside code under test must not read the developer's .env or key file.
    monkeypatch.setenv("KIBAN_ENV", "test")
    # A shell set up for Claude Code points these at some server: kiban would read them as its
    # Anthropic upstream, and the anthropic SDK as its own.
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return
