"""Auth test helpers: sign in over HTTP, create API keys, forge tokens."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from kiban.auth.key_cache import STALENESS_BOUND
from kiban.core import clock
from kiban.settings import Settings
from tests.conftest import DEFAULT_PASSWORD


async def sign_in(
    client: httpx.AsyncClient, email: str, password: str = DEFAULT_PASSWORD
) -> dict[str, Any]:
    """The token pair from POST /auth/token (asserts success)."""
    response = await client.post("/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_api_key(
    client: httpx.AsyncClient, headers: dict[str, str], name: str = "test key"
) -> dict[str, Any]:
    """A created API key's response body (asserts success)."""
    response = await client.post("/auth/api-keys", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def within_the_bound(
    check: Callable[[], Awaitable[bool]], bound: float = STALENESS_BOUND
) -> float:
    """Seconds until ``check()`` holds, asserted below the API-key cache's bound.

    Call it once the change's response has arrived (its transaction committed before that), so
    the time measured includes all of the delay a client could observe.
    """
    start = time.monotonic()
    while True:
        if await check():
            elapsed = time.monotonic() - start
            assert elapsed < bound, f"took {elapsed:.3f} s, the bound is {bound} s"
            return elapsed
        assert time.monotonic() - start < bound, f"not true within {bound} s"
        await asyncio.sleep(0.01)


def assert_auth_error(response: httpx.Response, code: str, status: int = 401) -> dict[str, Any]:
    """The response is an auth error with this code (and RFC 6750 challenge for a 401)."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if status == 401:
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="kiban"')
    return error


def base_claims(user_id: object, settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Valid access-token claims for the user; keyword arguments replace or (None) drop claims."""
    now = int(clock.now().timestamp())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], hmac_secret: bytes | None) -> str:
    """A compact JWT built by hand: HS256 over ``hmac_secret``, or no signature at all.

    PyJWT refuses to use a PEM key as an HMAC secret, which is exactly the attack we must try.
    """
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b""
    if hmac_secret is not None:
        signature = hmac.new(hmac_secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def write_keys_file(directory: Path, current: str, keys: list[dict[str, Any]]) -> Path:
    """A TOML key ring file; PEM keys given as objects are written next to it."""
    lines = [f'current = "{current}"', ""]
    for key in keys:
        lines.append("[[keys]]")
        for name, value in key.items():
            if name in ("private_key", "public_key") and not isinstance(value, str):
                path = directory / f"{key['kid']}-{name}.pem"
                path.write_bytes(pem(value))
                value = path.name
            lines.append(f'{name} = "{value}"')
        lines.append("")
    path = directory / "jwt-keys.toml"
    path.write_text("\n".join(lines))
    return path


def pem(key: Any) -> bytes:
    """PEM bytes of a private or public key object."""
    if hasattr(key, "private_bytes"):
        data: bytes = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return data
    public: bytes = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public


@pytest.fixture(scope="session")
def rsa_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ed25519_private_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()
