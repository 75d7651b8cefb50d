"""Sign-in throttling per account and per client address, shared through the database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI

from kiban.app import create_app
from kiban.core import clock
from kiban.models import User
from kiban.settings import Settings
from tests.auth.conftest import assert_auth_error
from tests.conftest import DEFAULT_PASSWORD, RunningApp

WINDOW = 600


@pytest.fixture
async def strict_app(make_settings: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        login_max_failures=3,
        login_max_failures_per_address=5,
        login_failure_window_seconds=WINDOW,
    )
    async with RunningApp(create_app(settings)) as app:
        yield app


def client_from(app: FastAPI, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def attempt(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/auth/token", data={"username": email, "password": password})


async def test_account_is_throttled_after_max_failures(strict_app: FastAPI, user: User) -> None:
    start = clock.now()
    async with client_from(strict_app, "10.0.0.1") as client:
        with clock.frozen(start):
            for _ in range(3):
                assert_auth_error(await attempt(client, user.email, "wrong"), "invalid_credentials")
            # Even the right password waits now: otherwise the throttle would be an oracle.
            throttled = await attempt(client, user.email, DEFAULT_PASSWORD)
        error = assert_auth_error(throttled, "too_many_attempts", status=429)
        assert throttled.headers["retry-after"] == str(WINDOW)
        assert error["retry_after"] == WINDOW
        with clock.frozen(start + timedelta(seconds=WINDOW - 100)):
            later = await attempt(client, user.email, DEFAULT_PASSWORD)
        assert later.headers["retry-after"] == "100"
        with clock.frozen(start + timedelta(seconds=WINDOW + 1)):
            assert (await attempt(client, user.email, DEFAULT_PASSWORD)).status_code == 200


async def test_throttle_counts_across_addresses_and_processes(
    make_settings: Callable[..., Settings], strict_app: FastAPI, user: User
) -> None:
    # A second app instance on the same database stands in for another process.
    settings = make_settings(login_max_failures=3, login_failure_window_seconds=WINDOW)
    async with (
        RunningApp(create_app(settings)) as other_app,
        client_from(strict_app, "10.0.0.1") as a,
        client_from(other_app, "10.0.0.2") as b,
    ):
        await attempt(a, user.email, "wrong")
        await attempt(b, user.email, "wrong")
        await attempt(a, user.email, "wrong")
        assert_auth_error(await attempt(b, user.email, "wrong"), "too_many_attempts", 429)


async def test_unknown_email_is_throttled_like_a_real_one(strict_app: FastAPI) -> None:
    async with client_from(strict_app, "10.0.0.3") as client:
        for _ in range(3):
            await attempt(client, "ghost@example.com", "wrong")
        assert_auth_error(
            await attempt(client, "ghost@example.com", "wrong"), "too_many_attempts", 429
        )


async def test_address_is_throttled_across_accounts(strict_app: FastAPI, user: User) -> None:
    async with (
        client_from(strict_app, "10.0.0.4") as spray,
        client_from(strict_app, "10.0.0.5") as bystander,
    ):
        for i in range(5):
            await attempt(spray, f"victim{i}@example.com", "wrong")
        assert_auth_error(
            await attempt(spray, "victim9@example.com", "x"), "too_many_attempts", 429
        )
        # Another address is not affected.
        assert (await attempt(bystander, user.email, DEFAULT_PASSWORD)).status_code == 200


async def test_success_forgives_the_account_failures(strict_app: FastAPI, user: User) -> None:
    async with client_from(strict_app, "10.0.0.6") as client:
        for _ in range(2):
            await attempt(client, user.email, "wrong")
        assert (await attempt(client, user.email, DEFAULT_PASSWORD)).status_code == 200
        for _ in range(2):
            assert_auth_error(await attempt(client, user.email, "wrong"), "invalid_credentials")


async def test_concurrent_guesses_cannot_exceed_the_limit(strict_app: FastAPI, user: User) -> None:
    async with client_from(strict_app, "10.0.0.7") as client:
        responses = await asyncio.gather(
            *(attempt(client, user.email, f"guess-{i}") for i in range(8))
        )
    statuses = [r.status_code for r in responses]
    # At most login_max_failures guesses reach the password check; the rest wait.
    assert statuses.count(401) <= 3, statuses
    assert statuses.count(429) >= 5, statuses
