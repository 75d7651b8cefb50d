"""Access tokens: signing and verification with the key ring."""

from __future__ import annotations

import uuid
from datetime import timedelta

import jwt

from kiban.auth.diagnosis import AccessClaims, parse_token, verify_parsed
from kiban.auth.keys import KeyRing
from kiban.core import clock
from kiban.settings import Settings

__all__ = ["AccessClaims", "issue_access_token", "verify_access_token"]


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
