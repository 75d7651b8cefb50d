"""``kiban doctor``: the checks a running instance depends on, each with what is wrong and the fix.

A check is an async function ``(DoctorContext) -> list[Finding]``, registered with
``@doctor_check`` in one registry, here. Each domain registers its own (signing keys, Stripe,
plans) in its ``doctor`` module; ``kiban.doctor`` imports those modules and runs every check in
order, and the command exits non-zero if any finding is a failure. A check that raises is
reported as a failure of that check, never as a crash of the command. The checks of what every
domain stands on (the database, the clock) are here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from kiban.core import clock
from kiban.core.db import create_engine
from kiban.core.migrations import migration_status
from kiban.settings import Settings

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    status: Status
    title: str
    detail: str = ""
    fix: str = ""


@dataclass
class DoctorContext:
    settings: Settings
    _engine: AsyncEngine | None = field(default=None, repr=False)

    @property
    def engine(self) -> AsyncEngine:
        """The database engine, created on first use (disposed by ``run_doctor``)."""
        if self._engine is None:
            self._engine = create_engine(self.settings.database_url, pool_size=1)
        return self._engine


DoctorCheck = Callable[[DoctorContext], Awaitable[list[Finding]]]
CHECKS: list[DoctorCheck] = []


def doctor_check(check: DoctorCheck) -> DoctorCheck:
    """Register a check with ``kiban doctor`` (it runs in registration order)."""
    if check not in CHECKS:
        CHECKS.append(check)
    return check


async def run_checks(settings: Settings) -> list[tuple[str, list[Finding]]]:
    """Run every registered check; each check's name and findings."""
    context = DoctorContext(settings)
    results: list[tuple[str, list[Finding]]] = []
    try:
        for check in CHECKS:
            name = (check.__doc__ or check.__name__).strip().splitlines()[0].rstrip(".")
            try:
                findings = await check(context)
            except Exception as e:  # one broken check must not hide the others
                findings = [Finding("fail", "the check itself failed", f"{type(e).__name__}: {e}")]
            results.append((name, findings))
    finally:
        if context._engine is not None:
            await context._engine.dispose()
    return results


# --- what every domain stands on -------------------------------------------------------------


@doctor_check
async def check_database(ctx: DoctorContext) -> list[Finding]:
    """Database reachable and migrated."""
    url = ctx.engine.url.render_as_string(hide_password=True)
    try:
        async with ctx.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            status = await conn.run_sync(migration_status)
    except Exception as e:
        return [
            Finding(
                "fail",
                f"cannot reach the database {url}",
                f"{type(e).__name__}: {e}",
                "check KIBAN_DATABASE_URL and that the database server is running",
            )
        ]
    if not status.at_head:
        current = ", ".join(status.current) or "empty (no migrations applied)"
        return [
            Finding(
                "fail",
                "the database schema is not at the newest migration",
                f"database at {current}; code expects {', '.join(status.heads)}",
                "run `kiban migrate`",
            )
        ]
    return [Finding("ok", f"database {url} reachable, migrations at head")]


@doctor_check
async def check_clock(ctx: DoctorContext) -> list[Finding]:
    """Clock sanity."""
    settings = ctx.settings
    findings: list[Finding] = []
    if ctx.engine.dialect.name == "postgresql":
        try:
            async with ctx.engine.connect() as conn:
                server_time = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
        except Exception as e:
            return [Finding("warn", "could not read the database server's clock", str(e))]
        here = clock.now()
        drift = abs((here - server_time.astimezone(UTC)).total_seconds())
        status: Status = "ok"
        if drift > settings.jwt_leeway_seconds:
            status = "fail"
        elif drift > 2:
            status = "warn"
        findings.append(
            Finding(
                status,
                f"this machine's clock and the database server's differ by {drift:.1f}s",
                f"tokens tolerate {settings.jwt_leeway_seconds}s of skew "
                "(KIBAN_JWT_LEEWAY_SECONDS)",
                "" if status == "ok" else "synchronize both machines with NTP (chrony, timesyncd)",
            )
        )
    else:
        findings.append(
            Finding(
                "ok", f"clock {clock.now().isoformat(timespec='seconds')} (SQLite: same machine)"
            )
        )
    if datetime.now(UTC).year < 2024:
        findings.append(Finding("fail", "the system clock is in the past", "", "enable NTP"))
    if settings.access_token_ttl_seconds <= settings.jwt_leeway_seconds:
        findings.append(
            Finding(
                "warn",
                "the access-token lifetime is not longer than the clock leeway",
                f"{settings.access_token_ttl_seconds}s vs {settings.jwt_leeway_seconds}s",
                "raise KIBAN_ACCESS_TOKEN_TTL_SECONDS or lower KIBAN_JWT_LEEWAY_SECONDS",
            )
        )
    return findings
