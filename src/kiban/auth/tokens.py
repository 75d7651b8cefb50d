"""Access tokens: signing and verification with the key ring."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt

from kiban.auth import exceptions as exc
from kiban.auth.keys import KeyRing
from kiban.core import clock
from kiban.settings import Settings


@dataclass(frozen=True)
class AccessClaims:
    sub: uuid.UUID
    jti: str
    raw: dict[str, Any]


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
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError as e:
        raise exc.MalformedToken() from e
    kid = header.get("kid")
    key = keyring.keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise exc.UnknownKeyId(kid)
    if header.get("alg") != key.algorithm:
        raise exc.AlgorithmNotAllowed(header.get("alg"), key.algorithm)
    try:
        claims = jwt.decode(
            token,
            key.verification_key,
            algorithms=[key.algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway_seconds,
            options={"require": ["sub", "iat", "nbf", "exp", "jti", "iss", "aud"]},
        )
    except jwt.InvalidSignatureError as e:
        raise exc.InvalidSignature() from e
    except jwt.ExpiredSignatureError as e:
        raise exc.TokenExpired() from e
    except jwt.ImmatureSignatureError as e:
        raise exc.TokenNotYetValid() from e
    except jwt.InvalidAudienceError as e:
        raise exc.InvalidAudience(settings.jwt_audience) from e
    except jwt.InvalidIssuerError as e:
        raise exc.InvalidIssuer(settings.jwt_issuer) from e
    except jwt.PyJWTError as e:
        raise exc.MalformedToken(str(e)) from e
    try:
        sub = uuid.UUID(str(claims["sub"]))
    except ValueError as e:
        raise exc.MalformedToken("The token's subject is not a user id.") from e
    return AccessClaims(sub=sub, jti=str(claims["jti"]), raw=claims)
