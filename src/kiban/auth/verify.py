"""Access tokens: the one place they are issued, and every check they must pass.

``issue_access_token`` signs the claims that the checks below require. ``verify_access_token``
runs the checks in order and raises the first failure (the request's 401, each failure its own
code); ``kiban token explain`` runs the same functions, keeps going after a failure and prints a
line for each. Expiry is judged against ``kiban.core.clock`` (not the system clock PyJWT would
use), so tests and the explain command see the same "now" as the server.
"""

from __future__ import annotations

import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from jwt.utils import base64url_decode

from kiban.auth import exceptions as exc
from kiban.auth.keys import KeyRing, SigningKey
from kiban.core import clock
from kiban.settings import Settings

REQUIRED_CLAIMS = ("sub", "iat", "nbf", "exp", "jti", "iss", "aud")


@dataclass(frozen=True)
class ParsedToken:
    """A JWT split and decoded, nothing trusted yet."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


@dataclass(frozen=True)
class AccessClaims:
    sub: uuid.UUID
    jti: str
    raw: dict[str, Any]


def parse_token(token: str) -> ParsedToken:
    """Split a compact JWS and decode its header and claims, or ``MalformedToken``."""
    parts = token.split(".")
    if len(parts) != 3:
        raise exc.MalformedToken(f"The token has {len(parts)} dot-separated parts; a JWT has 3.")
    try:
        header = json.loads(base64url_decode(parts[0]))
        claims = json.loads(base64url_decode(parts[1]))
        signature = base64url_decode(parts[2])
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError) as e:
        # RecursionError: JSON nested deeper than the parser goes ("[[[[…"), a forger's 500.
        raise exc.MalformedToken("The token's parts are not base64url-encoded JSON.") from e
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise exc.MalformedToken("The token's header and claims must be JSON objects.")
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    return ParsedToken(header, claims, signing_input, signature)


def resolve_key(keyring: KeyRing, header: dict[str, Any]) -> SigningKey:
    """The ring's key named by the header's kid, or ``UnknownKeyId``."""
    kid = header.get("kid")
    key = keyring.keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise exc.UnknownKeyId(kid)
    return key


def check_algorithm(header: dict[str, Any], key: SigningKey) -> None:
    """The header's alg must be the key's own (this is what stops alg:none and HS/RS confusion)."""
    if header.get("alg") != key.algorithm:
        raise exc.AlgorithmNotAllowed(header.get("alg"), key.algorithm)


def signature_matches(parsed: ParsedToken, key: SigningKey) -> bool:
    """Whether the key's algorithm and key verify the token's signature."""
    algorithm, prepared = key.verifier
    try:
        return bool(algorithm.verify(parsed.signing_input, prepared, parsed.signature))
    except Exception:  # a signature of the wrong shape for this key type is simply wrong
        return False


def check_signature(parsed: ParsedToken, key: SigningKey) -> None:
    if not signature_matches(parsed, key):
        raise exc.InvalidSignature()


def check_required(claims: dict[str, Any]) -> None:
    missing = [name for name in REQUIRED_CLAIMS if name not in claims]
    if missing:
        raise exc.MalformedToken(f"The token lacks required claims: {', '.join(missing)}.")
    for name in ("exp", "nbf", "iat"):
        if not isinstance(claims[name], int | float) or isinstance(claims[name], bool):
            raise exc.MalformedToken(f"The token's {name} claim is not a number.")


def check_expiry(claims: dict[str, Any], settings: Settings, now: datetime) -> None:
    if claims["exp"] <= now.timestamp() - settings.jwt_leeway_seconds:
        raise exc.TokenExpired()


def check_not_before(claims: dict[str, Any], settings: Settings, now: datetime) -> None:
    if claims["nbf"] > now.timestamp() + settings.jwt_leeway_seconds:
        raise exc.TokenNotYetValid()


def check_issued_at(claims: dict[str, Any], settings: Settings, now: datetime) -> None:
    if claims["iat"] > now.timestamp() + settings.jwt_leeway_seconds:
        raise exc.TokenNotYetValid("The token was issued in the future (iat).")


def check_audience(claims: dict[str, Any], settings: Settings) -> None:
    audience = claims["aud"]
    audiences = audience if isinstance(audience, list) else [audience]
    if settings.jwt_audience not in audiences:
        raise exc.InvalidAudience(settings.jwt_audience)


def check_issuer(claims: dict[str, Any], settings: Settings) -> None:
    if claims["iss"] != settings.jwt_issuer:
        raise exc.InvalidIssuer(settings.jwt_issuer)


def subject(claims: dict[str, Any]) -> uuid.UUID:
    try:
        return uuid.UUID(str(claims["sub"]))
    except ValueError as e:
        raise exc.MalformedToken("The token's subject is not a user id.") from e


def verify_parsed(
    keyring: KeyRing, settings: Settings, parsed: ParsedToken, now: datetime
) -> AccessClaims:
    """Every check, in order; the first failure is raised."""
    key = resolve_key(keyring, parsed.header)
    check_algorithm(parsed.header, key)
    check_signature(parsed, key)
    claims = parsed.claims
    check_required(claims)
    check_expiry(claims, settings, now)
    check_not_before(claims, settings, now)
    check_issued_at(claims, settings, now)
    check_audience(claims, settings)
    check_issuer(claims, settings)
    return AccessClaims(sub=subject(claims), jti=str(claims["jti"]), raw=claims)


def as_datetime(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def issue_access_token(keyring: KeyRing, settings: Settings, user_id: uuid.UUID) -> str:
    """A signed access JWT for the user, with the current key's kid in the header."""
    now = clock.now()
    key = keyring.current
    claims = {
        "sub": str(user_id),
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=settings.access_token_ttl_seconds),
        "jti": uuid.uuid4().hex,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    return jwt.encode(claims, key.signing_key, algorithm=key.algorithm, headers={"kid": key.kid})


def verify_access_token(keyring: KeyRing, settings: Settings, token: str) -> AccessClaims:
    """Verify a token and say precisely why it fails (each failure is its own 401 code)."""
    return verify_parsed(keyring, settings, parse_token(token), clock.now())
