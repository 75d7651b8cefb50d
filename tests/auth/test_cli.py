"""`kiban token explain`, `kiban doctor` and `kiban create-admin`, through typer's CliRunner."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from kiban.auth.explain import explain
from kiban.auth.verify import issue_access_token
from kiban.cli import app as cli
from kiban.core import clock
from kiban.core import doctor as doctor_module
from kiban.models import Role, User
from tests.auth.conftest import base_claims, bearer, forge, new_api_key, sign_in, write_keys_file
from tests.conftest import TEST_SECRET, create_user

runner = CliRunner()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> None:
    """The CLI's environment: the test database and the test app's signing key."""
    monkeypatch.setenv("KIBAN_DATABASE_URL", database_url)
    monkeypatch.setenv("KIBAN_SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("KIBAN_DEV_SECRET_FILE", str(tmp_path / ".kiban-secret"))
    monkeypatch.chdir(tmp_path)  # no stray .env


def explain_cli(token: str) -> tuple[int, str]:
    result = runner.invoke(cli, ["token", "explain", token])
    return result.exit_code, result.output


async def explain_in_thread(token: str) -> tuple[int, str]:
    """The CLI runs its own event loop (asyncio.run): from an async test it needs a thread."""
    return await asyncio.to_thread(explain_cli, token)


def test_explain_valid_access_token(app: FastAPI, user: User, cli_env: None) -> None:
    token = issue_access_token(app.state.keyring, app.state.settings, user.id)
    code, output = explain_cli(token)
    assert code == 0, output
    assert "signature valid with key hs-" in output
    assert f"user {user.email} exists and is active" in output
    assert "verdict: VALID" in output


def test_explain_expired_token_shows_the_clock(app: FastAPI, user: User, cli_env: None) -> None:
    with clock.shifted(-timedelta(hours=2)):
        token = issue_access_token(app.state.keyring, app.state.settings, user.id)
    code, output = explain_cli(token)
    assert code == 1
    assert "FAIL  exp " in output
    assert "ago" in output
    assert "leeway 30s" in output
    assert "verdict: INVALID (token_expired)" in output


def test_explain_future_iat_reports_skew(app: FastAPI, user: User, cli_env: None) -> None:
    with clock.shifted(timedelta(minutes=10)):
        token = issue_access_token(app.state.keyring, app.state.settings, user.id)
    code, output = explain_cli(token)
    assert code == 1
    assert "the issuer's clock is about" in output
    assert "token_not_yet_valid" in output


def test_explain_wrong_key(app: FastAPI, user: User, cli_env: None) -> None:
    claims = base_claims(user.id, app.state.settings)
    kid = app.state.keyring.current.kid
    token = jwt.encode(claims, "x" * 40, algorithm="HS256", headers={"kid": kid})
    code, output = explain_cli(token)
    assert code == 1
    assert "no key in this ring verifies it" in output
    assert "verdict: INVALID (invalid_signature)" in output
    assert "fingerprint" in output


def test_explain_names_the_key_that_really_signed(
    monkeypatch: pytest.MonkeyPatch, cli_env: None, tmp_path: Path, user: User, app: FastAPI
) -> None:
    secrets = {
        "a": "first-secret-that-is-long-enough-0123456789",
        "b": "second-secret-long-enough-0123456789abc",
    }
    ring = write_keys_file(tmp_path, "a", [{"kid": k, "secret": v} for k, v in secrets.items()])
    monkeypatch.setenv("KIBAN_JWT_KEYS_FILE", str(ring))
    claims = base_claims(user.id, app.state.settings)
    token = jwt.encode(claims, secrets["b"], algorithm="HS256", headers={"kid": "a"})
    code, output = explain_cli(token)
    assert code == 1
    assert "signature matches key 'b'" in output


def test_explain_alg_none_and_unknown_kid(app: FastAPI, user: User, cli_env: None) -> None:
    claims = base_claims(user.id, app.state.settings)
    kid = app.state.keyring.current.kid
    code, output = explain_cli(forge({"alg": "none", "kid": kid}, claims, None))
    assert code == 1
    assert "algorithm_not_allowed" in output
    code, output = explain_cli(
        jwt.encode(claims, TEST_SECRET, algorithm="HS256", headers={"kid": "old"})
    )
    assert code == 1
    assert "kid 'old' is in the key ring" in output
    assert "unknown_key_id" in output


async def test_explain_deleted_and_inactive_users(
    app: FastAPI, session: AsyncSession, cli_env: None
) -> None:
    gone = await create_user(session)
    off = await create_user(session, is_active=False)
    gone_token = issue_access_token(app.state.keyring, app.state.settings, gone.id)
    off_token = issue_access_token(app.state.keyring, app.state.settings, off.id)
    await session.delete(gone)
    await session.commit()
    result = await explain(gone_token, app.state.keyring, app.state.settings, session)
    assert result.error is not None
    assert result.error.error_code == "user_not_found"
    result = await explain(off_token, app.state.keyring, app.state.settings, session)
    assert result.error is not None
    assert result.error.error_code == "user_inactive"


async def test_explain_agrees_with_the_server(
    app: FastAPI, client: httpx.AsyncClient, user: User, session: AsyncSession
) -> None:
    settings, keyring = app.state.settings, app.state.keyring
    kid = keyring.current.kid
    claims = base_claims(user.id, settings)
    with clock.shifted(-timedelta(hours=1)):
        expired = issue_access_token(keyring, settings, user.id)
    tokens = [
        issue_access_token(keyring, settings, user.id),
        expired,
        jwt.encode(claims, "y" * 40, algorithm="HS256", headers={"kid": kid}),
        jwt.encode({**claims, "aud": "x"}, TEST_SECRET, algorithm="HS256", headers={"kid": kid}),
        jwt.encode({**claims, "iss": "x"}, TEST_SECRET, algorithm="HS256", headers={"kid": kid}),
        forge({"alg": "none", "kid": kid}, claims, None),
        "a.b.c",
        "kb_0123456789ab_" + "z" * 43,
    ]
    for token in tokens:
        response = await client.get("/auth/me", headers=bearer(token))
        result = await explain(token, keyring, settings, session)
        server = response.json()["error"]["code"] if response.status_code != 200 else None
        mine = result.error.error_code if result.error else None
        assert server == mine, (token, result.lines)


async def test_explain_refresh_token_family(
    client: httpx.AsyncClient, user: User, cli_env: None
) -> None:
    stolen = (await sign_in(client, user.email))["refresh_token"]
    await client.post("/auth/refresh", json={"refresh_token": stolen})
    code, output = await explain_in_thread(stolen)
    assert code == 1
    assert "revoked" in output
    assert "rotated" in output
    assert "would revoke its whole family" in output
    await client.post("/auth/refresh", json={"refresh_token": stolen})  # the replay
    code, output = await explain_in_thread(stolen)
    assert "family: revoked (reuse_detected)" in output
    fresh = (await sign_in(client, user.email))["refresh_token"]
    assert fresh.startswith("kbr_")  # never "-…", which the command line would take as an option
    code, output = await explain_in_thread(fresh)
    assert code == 0, output
    assert "family: 1 live token(s)" in output


async def test_explain_api_key(
    client: httpx.AsyncClient, user_headers: dict[str, str], cli_env: None
) -> None:
    created = await new_api_key(client, user_headers, name="deploy")
    code, output = await explain_in_thread(created["key"])
    assert code == 0, output
    assert "secret matches key 'deploy'" in output
    await client.delete(f"/auth/api-keys/{created['id']}", headers=user_headers)
    code, output = await explain_in_thread(created["key"])
    assert code == 1
    assert "invalid_api_key" in output


def test_explain_malformed(cli_env: None) -> None:
    code, output = explain_cli("not.a.jwt")
    assert code == 1
    assert "malformed_token" in output


def test_doctor_passes_on_a_migrated_database(cli_env: None, app: FastAPI) -> None:
    result = runner.invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert f"fingerprint {app.state.keyring.fingerprint}" in result.output
    assert "migrations at head" in result.output


def test_doctor_reports_an_unmigrated_database(
    cli_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KIBAN_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    result = runner.invoke(cli, ["doctor"])
    assert result.exit_code == 1
    assert "run `kiban migrate`" in result.output


def test_doctor_refuses_a_weak_production_key(
    cli_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIBAN_ENV", "production")
    monkeypatch.setenv("KIBAN_SECRET_KEY", "changeme")
    result = runner.invoke(cli, ["doctor"])
    assert result.exit_code == 1
    assert "well-known default" in result.output
    assert "fix: set KIBAN_SECRET_KEY" in result.output


def test_doctor_runs_checks_other_domains_register(cli_env: None, app: FastAPI) -> None:
    @doctor_module.doctor_check
    async def check_provider(ctx: doctor_module.DoctorContext) -> list[doctor_module.Finding]:
        """Provider reachable."""
        return [doctor_module.Finding("fail", "provider down", fix="start it")]

    try:
        result = runner.invoke(cli, ["doctor"])
    finally:
        doctor_module.CHECKS.remove(check_provider)
    assert result.exit_code == 1
    assert "Provider reachable" in result.output
    assert "fix: start it" in result.output


async def test_create_admin_creates_and_promotes(
    cli_env: None, session: AsyncSession, user: User
) -> None:
    result = await asyncio.to_thread(
        runner.invoke,
        cli,
        ["create-admin", "--email", " Boss@Example.com", "--password", "a long admin password"],
    )
    assert result.exit_code == 0, result.output
    boss = await session.scalar(select(User).where(User.email == "boss@example.com"))
    assert boss is not None
    assert boss.role == Role.ADMIN
    promoted = await asyncio.to_thread(runner.invoke, cli, ["create-admin", "--email", user.email])
    assert promoted.exit_code == 0, promoted.output
    assert "is now an admin" in promoted.output
    await session.refresh(user)
    assert user.role == Role.ADMIN


def test_create_admin_applies_the_password_policy(cli_env: None, app: FastAPI) -> None:
    result = runner.invoke(
        cli, ["create-admin", "--email", "weak@example.com", "--password", "short"]
    )
    assert result.exit_code == 2
    assert "at least 10" in result.output


def test_create_admin_prompts_for_the_password(cli_env: None, app: FastAPI) -> None:
    result = runner.invoke(
        cli,
        ["create-admin", "--email", "prompt@example.com"],
        input="a long admin password\na long admin password\n",
    )
    assert result.exit_code == 0, result.output
    assert "created admin prompt@example.com" in result.output


async def test_explain_without_a_database_is_undecided(app: FastAPI, user: User) -> None:
    token = issue_access_token(app.state.keyring, app.state.settings, user.id)
    result = await explain(token, app.state.keyring, app.state.settings, None)
    assert result.error is None
    assert not result.valid
    assert result.undecided is not None
    assert ("--", "user: not checked (no database)") in result.lines


def test_explain_with_an_unreachable_database(
    cli_env: None, monkeypatch: pytest.MonkeyPatch, app: FastAPI, user: User, tmp_path: Path
) -> None:
    token = issue_access_token(app.state.keyring, app.state.settings, user.id)
    monkeypatch.setenv("KIBAN_DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:1/none")
    code, output = explain_cli(token)
    assert code == 1
    assert "database unreachable" in output
    assert "signature valid" in output
    assert "verdict: UNDECIDED" in output
