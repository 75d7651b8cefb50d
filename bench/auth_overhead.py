"""Authentication overhead per request: no auth vs access token (JWT) vs API key.

Runs the real app over ASGI (no network) on a migrated SQLite file (or PostgreSQL with
--postgres), with one user and one API key, and times sequential requests:

- baseline: ``GET /healthz`` (no authentication)
- ``GET /auth/me`` with an access token (JWT verify + one primary-key read of the user)
- ``GET /auth/me`` with an API key (SHA-256 + one indexed read of key and user)

It prints the median and p95 per request and the overhead against the baseline, measured in the
same run, plus the bare ``verify_access_token`` cost.

    .venv/bin/python bench/auth_overhead.py [--requests 2000] [--postgres SERVER_URL]

With --postgres, a scratch database is created on that server and dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import timeit
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from kiban.app import create_app
from kiban.auth.api_keys import create_api_key
from kiban.auth.passwords import hash_password
from kiban.auth.verify import issue_access_token, verify_access_token
from kiban.core.db import create_engine, session_scope
from kiban.core.migrations import upgrade
from kiban.models import User
from kiban.settings import Settings


async def _time(
    client: httpx.AsyncClient, cases: list[tuple[str, dict[str, str]]], n: int
) -> list[list[float]]:
    """Interleaved samples (µs) per case, so load from other processes hits every case alike."""
    for path, headers in cases * 100:  # warm up
        await client.get(path, headers=headers)
    samples: list[list[float]] = [[] for _ in cases]
    for _ in range(n):
        for i, (path, headers) in enumerate(cases):
            start = time.perf_counter()
            response = await client.get(path, headers=headers)
            samples[i].append((time.perf_counter() - start) * 1e6)
            assert response.status_code == 200, response.text
    return samples


def _row(name: str, samples: list[float], baseline: float | None) -> str:
    median = statistics.median(samples)
    p95 = statistics.quantiles(samples, n=20)[18]
    extra = "" if baseline is None else f"  +{median - baseline:7.0f} µs  x{median / baseline:.2f}"
    return f"{name:<28} median {median:7.0f} µs  p95 {p95:7.0f} µs{extra}"


@asynccontextmanager
async def scratch_database(server_url: str | None, tmp: Path) -> AsyncIterator[str]:
    """A SQLite file, or a PostgreSQL database of this run's own, dropped afterwards."""
    if server_url is None:
        yield f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        return
    name = f"kiban_bench_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(make_url(server_url), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def main(n: int, database_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database(database_url, Path(tmp)) as url:
            await run(n, url)


async def run(n: int, url: str) -> None:
    engine = create_engine(url)
    await upgrade(engine)
    await engine.dispose()
    settings = Settings(
        env="test", database_url=url, secret_key="bench-secret-" + "x" * 40, _env_file=None
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with session_scope(app.state.sessionmaker) as session:
            user = User(
                email=f"bench-{time.time_ns()}@example.com",
                password_hash=hash_password("p" * 12),
            )
            session.add(user)
            await session.flush()
            key = (await create_api_key(session, user, "bench")).plaintext
        token = issue_access_token(app.state.keyring, settings, user.id)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            base, jwt_samples, key_samples = await _time(
                client,
                [
                    ("/healthz", {}),
                    ("/auth/me", {"Authorization": f"Bearer {token}"}),
                    ("/auth/me", {"Authorization": f"Bearer {key}"}),
                ],
                n,
            )
    baseline = statistics.median(base)
    print(f"auth overhead, {n} requests each, interleaved, {url.split(':')[0]}")
    print(_row("GET /healthz (no auth)", base, None))
    print(_row("GET /auth/me, access token", jwt_samples, baseline))
    print(_row("GET /auth/me, API key", key_samples, baseline))
    per = timeit.timeit(
        lambda: verify_access_token(app.state.keyring, settings, token), number=20000
    )
    print(f"verify_access_token alone     {per / 20000 * 1e6:7.1f} µs (HS256)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--postgres", default=None, help="a PostgreSQL server URL")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.postgres))
