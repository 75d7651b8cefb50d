"""``kiban doctor``: the checks a running instance depends on, each with what is wrong and the fix.

A check is an async function ``(DoctorContext) -> list[Finding]``, registered with
``@doctor_check``. Other domains add theirs (provider reachable, Stripe keys, plans) by
registering in a module listed in ``DOCTOR_MODULES``; the command imports those modules, runs
every check in order, and exits non-zero if any finding is a failure. A check that raises is
reported as a failure of that check, never as a crash of the command.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from kiban.auth.keys import load_keyring
from kiban.core import clock
from kiban.core.db import create_engine
from kiban.core.migrations import migration_status
from kiban.settings import ConfigurationError, Settings, secret_problem

Status = Literal["ok", "warn", "fail"]

# Modules whose import registers doctor checks; later issues append theirs.
DOCTOR_MODULES: list[str] = ["kiban.auth.doctor", "kiban.billing.doctor"]


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


async def run_doctor(settings: Settings) -> list[tuple[str, list[Finding]]]:
    """Run every registered check; each check's name and findings."""
    for module in DOCTOR_MODULES:
        importlib.import_module(module)
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


# --- auth's checks ----------------------------------------------------------------------------

_KEY_ADVICE = (
    "set KIBAN_SECRET_KEY to a random value of 32+ characters "
    "(python -c 'import secrets; print(secrets.token_urlsafe(48))'), the same on every instance"
)


@doctor_check
async def check_jwt_keys(ctx: DoctorContext) -> list[Finding]:
    """JWT signing keys."""
    settings = ctx.settings
    production = settings.env == "production"
    findings: list[Finding] = []
    if settings.jwt_keys_file is None and settings.secret_key is None and not production:
        if not settings.dev_secret_file.exists():
            return [
                Finding(
                    "warn",
                    "no signing key configured yet",
                    f"the server will generate a development key in {settings.dev_secret_file}",
                    _KEY_ADVICE,
                )
            ]
        findings.append(
            Finding(
                "warn",
                f"using the generated development key in {settings.dev_secret_file}",
                "instances on other machines will not accept this instance's tokens",
                _KEY_ADVICE,
            )
        )
    if settings.jwt_keys_file is not None and settings.secret_key is not None:
        findings.append(
            Finding(
                "warn",
                "both KIBAN_JWT_KEYS_FILE and KIBAN_SECRET_KEY are set",
                "the key ring file is used and KIBAN_SECRET_KEY is ignored",
                "unset KIBAN_SECRET_KEY, or add it to the key ring file as a verify key",
            )
        )
    try:
        keyring, _ = load_keyring(settings)
    except ConfigurationError as e:
        return [*findings, Finding("fail", "the key ring cannot be loaded", str(e), _KEY_ADVICE)]
    for key in keyring.keys.values():
        problem = secret_problem(key.verification_key) if key.is_hmac else _asymmetric_problem(key)
        if problem:
            findings.append(
                Finding(
                    "fail" if production else "warn",
                    f"key {key.kid}: {problem}",
                    "anyone who guesses it can sign tokens for any user",
                    _KEY_ADVICE if key.is_hmac else "generate a 2048-bit or larger RSA key",
                )
            )
    described = "; ".join(k.describe() for k in keyring.keys.values())
    findings.append(
        Finding(
            "ok",
            f"key ring from {keyring.source}: fingerprint {keyring.fingerprint}, "
            f"current kid {keyring.current.kid}",
            f"{described}. Every instance must show the same fingerprint (see /healthz).",
        )
    )
    return findings


def _asymmetric_problem(key: object) -> str | None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from kiban.auth.keys import MIN_RSA_BITS, SigningKey

    assert isinstance(key, SigningKey)
    public = key.verification_key
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        return f"RSA key is only {public.key_size} bits"
    return None


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
