"""Auth's commands: ``kiban create-admin``, ``kiban token explain``."""

from __future__ import annotations

import asyncio

import typer
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.auth import exceptions as exc
from kiban.auth.explain import FAIL, OK, WARN, Explanation, explain
from kiban.auth.keys import load_keyring
from kiban.auth.passwords import password_problem
from kiban.auth.schemas import Email
from kiban.core.db import create_engine, create_sessionmaker, session_scope
from kiban.models import Role
from kiban.settings import ConfigurationError, Settings

token_app = typer.Typer(help="Inspect tokens.", no_args_is_help=True)

_COLORS = {OK: "green", FAIL: "red", WARN: "yellow"}


def register(app: typer.Typer) -> None:
    """Add auth's commands to the ``kiban`` command."""
    app.command("create-admin")(create_admin)
    app.add_typer(token_app, name="token")


def _settings() -> Settings:
    return Settings()


def create_admin(
    email: str = typer.Option(..., prompt=True, help="The admin's email."),
    password: str | None = typer.Option(
        None, help="Password for a new account (prompted when omitted)."
    ),
) -> None:
    """Create an admin account, or make an existing account an admin."""
    try:
        email = TypeAdapter(Email).validate_python(email)
    except ValidationError as e:
        typer.secho(f"error: {email!r} is not a valid email address", fg="red", err=True)
        raise typer.Exit(2) from e
    settings = _settings()

    async def run() -> str:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            async with session_scope(create_sessionmaker(engine)) as session:
                return await _create_admin(session, email, password)
        finally:
            await engine.dispose()

    try:
        typer.echo(asyncio.run(run()))
    except exc.EmailTaken as e:  # pragma: no cover - a concurrent registration
        typer.secho(f"error: {e.message}", fg="red", err=True)
        raise typer.Exit(1) from e


async def _create_admin(session: AsyncSession, email: str, password: str | None) -> str:
    from kiban.auth import service

    user = await service.get_user_by_email(session, email)
    if user is not None:
        if user.role == Role.ADMIN:
            return f"{email} is already an admin"
        user.role = Role.ADMIN
        return f"{email} is now an admin"
    while True:
        if password is None:
            password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        problem = password_problem(password)
        if problem is None:
            break
        typer.secho(f"The password {problem}.", fg="red", err=True)
        if not _interactive():
            raise typer.Exit(2)
        password = None
    user = await service.create_user(session, email, password, role=Role.ADMIN)
    return f"created admin {user.email} ({user.id})"


def _interactive() -> bool:
    import sys

    return sys.stdin.isatty()


@token_app.command("explain")
def token_explain(
    token: str = typer.Argument(..., help="An access token, refresh token or kb_ API key."),
) -> None:
    """Check a token as this server would, one line per check; exit 0 only if it is valid."""
    settings = _settings()
    try:
        keyring, _ = load_keyring(settings)
    except ConfigurationError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e

    async def run() -> Explanation:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            async with create_sessionmaker(engine)() as session:
                try:
                    return await explain(token, keyring, settings, session)
                except Exception as e:  # the database is down: explain what needs no database
                    typer.secho(f"database unreachable: {type(e).__name__}: {e}", fg="yellow")
            return await explain(token, keyring, settings, None)
        finally:
            await engine.dispose()

    result = asyncio.run(run())
    typer.secho(f"{result.kind}", bold=True)
    for status, line in result.lines:
        typer.secho(f"  {status:<5} {line}", fg=_COLORS.get(status))
    if result.valid:
        typer.secho("verdict: VALID", fg="green", bold=True)
        return
    if result.error is not None:
        typer.secho(
            f"verdict: INVALID ({result.error.error_code}): {result.error.message}",
            fg="red",
            bold=True,
        )
        if result.error.hint:
            typer.echo(f"hint: {result.error.hint}")
    else:
        typer.secho(f"verdict: UNDECIDED: {result.undecided}", fg="yellow", bold=True)
    raise typer.Exit(1)
