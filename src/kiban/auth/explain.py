"""``kiban token explain``: why a credential is accepted or refused, one line per check.

Nothing in the token is trusted: the header and claims are decoded, shown, then run through the
same check functions the server uses (``kiban.auth.verify``), against this configuration's key
ring and this machine's clock. The verdict comes from ``verify_parsed`` itself, so the command
cannot disagree with the server. Refresh tokens and API keys are explained from the database.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.auth import exceptions as exc
from kiban.auth import refresh
from kiban.auth import verify as d
from kiban.auth.api_keys import KEY_SHAPE, hash_api_key, looks_like_api_key
from kiban.auth.keys import KeyRing
from kiban.core import clock
from kiban.core.errors import AppError
from kiban.models import ApiKey, RefreshToken, User
from kiban.settings import Settings

OK, FAIL, WARN, INFO, SKIP = "ok", "FAIL", "warn", "info", "--"


@dataclass
class Explanation:
    kind: str
    lines: list[tuple[str, str]] = field(default_factory=list)
    error: AppError | None = None
    undecided: str | None = None  # a check that could not run (the database was unreachable)

    @property
    def valid(self) -> bool:
        return self.error is None and self.undecided is None

    def add(self, status: str, text: str) -> None:
        self.lines.append((status, text))

    def check(self, text: str, step: Callable[[], object]) -> bool:
        """Run one check; a line saying whether it passed (and why not)."""
        try:
            step()
        except exc.AuthenticationError as e:
            self.add(FAIL, f"{text}: {e.message} [{e.error_code}]")
            return False
        self.add(OK, text)
        return True


def _when(moment: datetime, now: datetime) -> str:
    seconds = int((moment - now).total_seconds())
    span = _span(abs(seconds))
    relative = "now" if seconds == 0 else (f"in {span}" if seconds > 0 else f"{span} ago")
    return f"{moment.isoformat(timespec='seconds')} ({relative})"


def _span(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{days}d" if days else "",
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
    ]
    text = "".join(parts) + (f"{secs}s" if secs or not any(parts) else "")
    return text


async def explain(
    token: str, keyring: KeyRing, settings: Settings, session: AsyncSession | None
) -> Explanation:
    """Every check a credential goes through here, and the verdict."""
    token = token.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    if looks_like_api_key(token):
        return await _explain_api_key(token, session)
    if token.count(".") == 0:
        return await _explain_refresh(token, session)
    return await _explain_jwt(token, keyring, settings, session)


async def _explain_jwt(
    token: str, keyring: KeyRing, settings: Settings, session: AsyncSession | None
) -> Explanation:
    out = Explanation("access token (JWT)")
    try:
        parsed = d.parse_token(token)
    except exc.MalformedToken as e:
        out.add(FAIL, f"decode: {e.message}")
        out.error = e
        return out
    now = clock.now()
    header, claims = parsed.header, parsed.claims
    out.add(INFO, f"header: {_compact(header)}")
    out.add(INFO, f"claims (unverified): {_compact(claims)}")
    out.add(INFO, f"this server: key ring {keyring.source}, fingerprint {keyring.fingerprint}")
    out.add(INFO, f"this server's clock: {now.isoformat(timespec='seconds')}")
    kid, alg = header.get("kid"), header.get("alg")
    key = keyring.keys.get(kid) if isinstance(kid, str) else None
    known = ", ".join(sorted(keyring.keys))
    out.check(f"kid {kid!r} is in the key ring ({known})", lambda: d.resolve_key(keyring, header))
    if key is None and isinstance(kid, str) and kid.startswith("hs-"):
        out.add(
            INFO,
            f"kid {kid!r} is derived from a KIBAN_SECRET_KEY: the issuing instance's secret "
            "differs from this one's (the most common cause of '/token works, /me is 401')",
        )
    if key is not None:
        alg_ok = out.check(
            f"algorithm {alg!r} is the key's ({key.algorithm})",
            lambda: d.check_algorithm(header, key),
        )
    else:
        alg_ok = False
        usable = alg in keyring.algorithms
        out.add(WARN if usable else FAIL, f"algorithm {alg!r}: ring uses {keyring.algorithms}")
    signed = key is not None and alg_ok and d.signature_matches(parsed, key)
    if key is not None and signed:
        out.add(OK, f"signature valid with key {key.describe()}")
    else:
        others = [
            k
            for k in keyring.keys.values()
            if k.algorithm == alg and d.signature_matches(parsed, k)
        ]
        if others:
            out.add(FAIL, f"signature matches key {others[0].kid!r}, not the one the header names")
        else:
            out.add(
                FAIL,
                "signature: no key in this ring verifies it (signed with another key, or altered; "
                "compare /healthz key fingerprints across instances)",
            )
    if not signed:
        out.add(INFO, "the claims below are checked even so, but nothing vouches for them")
    if out.check(
        "required claims present (" + ", ".join(d.REQUIRED_CLAIMS) + ")",
        lambda: d.check_required(claims),
    ):
        _time_lines(out, claims, settings, now)
        out.check(
            f"audience {claims['aud']!r} includes {settings.jwt_audience!r}",
            lambda: d.check_audience(claims, settings),
        )
        out.check(
            f"issuer {claims['iss']!r} is {settings.jwt_issuer!r}",
            lambda: d.check_issuer(claims, settings),
        )
    try:
        verified = d.verify_parsed(keyring, settings, parsed, now)
    except exc.AuthenticationError as e:
        out.error = e
        return out
    await _user_lines(out, session, verified.sub)
    return out


def _time_lines(
    out: Explanation, claims: dict[str, Any], settings: Settings, now: datetime
) -> None:
    leeway = settings.jwt_leeway_seconds
    try:
        exp, nbf, iat = (d.as_datetime(claims[n]) for n in ("exp", "nbf", "iat"))
    except (OverflowError, OSError, ValueError):
        out.add(WARN, "exp, nbf or iat is not a representable time")
        return
    out.check(
        f"exp {_when(exp, now)}, leeway {leeway}s", lambda: d.check_expiry(claims, settings, now)
    )
    out.check(
        f"nbf {_when(nbf, now)}, leeway {leeway}s",
        lambda: d.check_not_before(claims, settings, now),
    )
    if not out.check(
        f"iat {_when(iat, now)}, leeway {leeway}s",
        lambda: d.check_issued_at(claims, settings, now),
    ):
        skew = _span(int((iat - now).total_seconds()))
        out.add(WARN, f"the issuer's clock is about {skew} ahead of this one")


async def _user_lines(out: Explanation, session: AsyncSession | None, user_id: uuid.UUID) -> None:
    if session is None:
        out.add(SKIP, "user: not checked (no database)")
        out.undecided = "the database was not reachable, so the user could not be checked"
        return
    user = await session.get(User, user_id)
    if user is None:
        out.add(FAIL, f"user {user_id} does not exist in this database")
        out.error = exc.UserNotFound()
        return
    if not user.is_active:
        out.add(FAIL, f"user {user.email} is deactivated")
        out.error = exc.UserInactive()
        return
    out.add(OK, f"user {user.email} exists and is active (role {user.role})")


async def _explain_refresh(token: str, session: AsyncSession | None) -> Explanation:
    out = Explanation("refresh token (opaque)")
    if session is None:
        out.add(SKIP, "refresh tokens live in the database, which was not reachable")
        out.undecided = "the database was not reachable"
        return out
    record = await refresh.find(session, token)
    now = clock.now()
    if record is None:
        out.add(FAIL, "not found: never issued by this database, or mistyped")
        out.error = exc.TokenRevoked("This refresh token is not known.")
        return out
    out.add(OK, f"issued {_when(record.created_at, now)}, family {record.family_id}")
    live = await session.scalar(
        select(func.count()).where(
            RefreshToken.family_id == record.family_id, RefreshToken.revoked_at.is_(None)
        )
    )
    reasons = set(
        (
            await session.scalars(
                select(RefreshToken.revoked_reason).where(
                    RefreshToken.family_id == record.family_id
                )
            )
        ).all()
    )
    if record.revoked_at is not None:
        out.add(FAIL, f"revoked {_when(record.revoked_at, now)} ({record.revoked_reason})")
        if record.revoked_reason == refresh.ROTATED:
            out.add(WARN, "presenting it again would revoke its whole family (reuse = theft)")
        out.error = exc.TokenRevoked(f"This refresh token was revoked ({record.revoked_reason}).")
    else:
        out.add(OK, "not revoked")
    family_state = "revoked" if not live else f"{live} live token(s)"
    bad = sorted(r for r in reasons if r and r != refresh.ROTATED)
    out.add(
        FAIL if not live else OK,
        f"family: {family_state}" + (f" ({', '.join(bad)})" if bad else ""),
    )
    if record.expires_at <= now:
        out.add(FAIL, f"expired {_when(record.expires_at, now)}")
        out.error = out.error or exc.TokenExpired("The refresh token has expired.")
    else:
        out.add(OK, f"expires {_when(record.expires_at, now)}")
    if out.error is None:
        await _user_lines(out, session, record.user_id)
    return out


async def _explain_api_key(token: str, session: AsyncSession | None) -> Explanation:
    out = Explanation("API key")
    match = KEY_SHAPE.match(token)
    if match is None:
        out.add(FAIL, "shape: expected kb_<12 hex>_<secret>")
        out.error = exc.InvalidApiKey("The API key is not well formed.")
        return out
    out.add(OK, f"shape: prefix kb_{match.group(1)}")
    if session is None:
        out.add(SKIP, "API keys live in the database, which was not reachable")
        out.undecided = "the database was not reachable"
        return out
    key = await session.scalar(select(ApiKey).where(ApiKey.lookup_id == match.group(1)))
    if key is None:
        out.add(FAIL, f"no key with prefix kb_{match.group(1)} in this database")
        out.error = exc.InvalidApiKey()
        return out
    if not hmac.compare_digest(key.key_hash, hash_api_key(token)):
        out.add(FAIL, f"prefix kb_{key.lookup_id} ({key.name!r}) exists but the secret differs")
        out.error = exc.InvalidApiKey()
        return out
    now = clock.now()
    out.add(OK, f"secret matches key {key.name!r}, created {_when(key.created_at, now)}")
    used = _when(key.last_used_at, now) if key.last_used_at else "never"
    out.add(INFO, f"last used {used} (recorded at one-minute resolution)")
    if key.revoked_at is not None:
        out.add(FAIL, f"revoked {_when(key.revoked_at, now)}")
        out.error = exc.InvalidApiKey("The API key has been revoked.")
        return out
    out.add(OK, "not revoked")
    await _user_lines(out, session, key.user_id)
    return out


def _compact(data: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in data.items())
