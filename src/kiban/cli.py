"""The `kiban` command."""

from __future__ import annotations

import asyncio

import typer
from sqlalchemy.engine import make_url

from kiban.admin.cli import admin_app
from kiban.auth.cli import register as register_auth_commands
from kiban.billing.cli import billing_app, stripe_app
from kiban.knowledge.cli import knowledge_app
from kiban.settings import ConfigurationError, Settings

app = typer.Typer(
    help="kiban: accounts, billing, a metered AI gateway and grounded answers.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
    workers: int = typer.Option(1, help="Worker processes (up to the cores; quotas stay exact)."),
    reload: bool = typer.Option(False, help="Reload on code changes (development)."),
) -> None:
    """Serve the API (OpenAPI docs at /docs)."""
    import uvicorn

    settings = Settings()
    try:
        from kiban.app import create_app

        # Fail fast, with the fix, before uvicorn starts workers.
        key_note = create_app(settings).state.key_note
    except ConfigurationError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
    if key_note:
        typer.secho(f"note: {key_note}", fg="yellow")
    typer.echo(f"kiban serving on http://{host}:{port} (docs at http://{host}:{port}/docs)")
    uvicorn.run(
        "kiban.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        reload=reload,
        log_config=None,
        access_log=False,
        proxy_headers=True,
    )


@app.command()
def migrate(revision: str = typer.Argument("heads", help="Target revision.")) -> None:
    """Apply database migrations (KIBAN_DATABASE_URL)."""
    from kiban.core.db import create_engine
    from kiban.core.migrations import upgrade

    settings = Settings()

    async def run() -> None:
        engine = create_engine(settings.database_url)
        try:
            await upgrade(engine, revision)
        finally:
            await engine.dispose()

    asyncio.run(run())
    shown = make_url(settings.database_url).render_as_string(hide_password=True)
    typer.echo(f"migrated {shown} to {revision}")


_DOCTOR_COLORS = {"ok": "green", "warn": "yellow", "fail": "red"}


@app.command()
def doctor() -> None:
    """Check the configuration this instance depends on; exit 1 if anything is wrong."""
    try:
        settings = Settings()
    except Exception as e:
        typer.secho(f"FAIL  settings cannot be read: {e}", fg="red", err=True)
        raise typer.Exit(1) from e
    from kiban.doctor import run_doctor

    results = asyncio.run(run_doctor(settings))
    failures = 0
    for name, findings in results:
        typer.secho(name, bold=True)
        for finding in findings:
            failures += finding.status == "fail"
            label = finding.status.upper() if finding.status != "ok" else "ok"
            typer.secho(f"  {label:<5} {finding.title}", fg=_DOCTOR_COLORS[finding.status])
            if finding.detail:
                typer.echo(f"        {finding.detail}")
            if finding.fix:
                typer.echo(f"        fix: {finding.fix}")
    if failures:
        typer.secho(f"\n{failures} problem(s) found.", fg="red", bold=True)
        raise typer.Exit(1)
    typer.secho("\nNo problems found.", fg="green", bold=True)


# Each domain contributes its commands.
register_auth_commands(app)  # create-admin, token explain
app.add_typer(billing_app, name="billing")  # expire, reconcile
app.add_typer(stripe_app, name="stripe")  # simulate
app.add_typer(knowledge_app, name="knowledge")  # seed, search
app.add_typer(admin_app, name="admin")  # rebuild-rollups


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
