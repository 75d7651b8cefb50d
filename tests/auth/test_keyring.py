"""The key ring file: RS256/EdDSA keys, rotation by kid, algorithm confusion, weak keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from fastapi import FastAPI

from kiban.app import create_app
from kiban.auth.keys import load_keyring_file
from kiban.auth.verify import issue_access_token, verify_access_token
from kiban.models import User
from kiban.settings import ConfigurationError, Settings
from tests.auth.conftest import assert_auth_error, base_claims, bearer, forge, pem, write_keys_file
from tests.conftest import RunningApp, make_client

STRONG = "a-strong-hmac-secret-for-the-old-key-0123456789"


async def _me(app: FastAPI, token: str) -> httpx.Response:
    async with make_client(app) as client:
        return await client.get("/auth/me", headers=bearer(token))


@pytest.fixture
def rs256_ring(tmp_path: Path, rsa_private_key: rsa.RSAPrivateKey) -> Path:
    return write_keys_file(
        tmp_path,
        "rs-1",
        [{"kid": "rs-1", "algorithm": "RS256", "private_key": rsa_private_key}],
    )


async def test_rs256_ring_signs_and_verifies(
    make_settings: Callable[..., Settings], rs256_ring: Path, user: User
) -> None:
    async with RunningApp(create_app(make_settings(jwt_keys_file=rs256_ring))) as app:
        token = issue_access_token(app.state.keyring, app.state.settings, user.id)
        assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": "rs-1", "typ": "JWT"}
        assert (await _me(app, token)).status_code == 200


async def test_hs256_token_signed_with_the_public_key_is_refused(
    make_settings: Callable[..., Settings],
    rs256_ring: Path,
    rsa_private_key: rsa.RSAPrivateKey,
    user: User,
) -> None:
    """The classic algorithm-confusion attack: HMAC keyed with the (public) RSA key's PEM."""
    settings = make_settings(jwt_keys_file=rs256_ring)
    public_pem = pem(rsa_private_key.public_key())
    claims = base_claims(user.id, settings)
    async with RunningApp(create_app(settings)) as app:
        token = forge({"alg": "HS256", "typ": "JWT", "kid": "rs-1"}, claims, public_pem)
        error = assert_auth_error(await _me(app, token), "algorithm_not_allowed")
        assert "RS256" in error["message"]
        # Presented under a kid the ring does not know, it fails on the kid instead.
        unknown = forge({"alg": "HS256", "typ": "JWT", "kid": "hs-x"}, claims, public_pem)
        assert_auth_error(await _me(app, unknown), "unknown_key_id")
        # And a plain HS256 token from a KIBAN_SECRET_KEY instance is refused too.
        hs = jwt.encode(claims, STRONG, algorithm="HS256", headers={"kid": "rs-1"})
        assert_auth_error(await _me(app, hs), "algorithm_not_allowed")


async def test_rotation_keeps_old_tokens_valid(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    rsa_private_key: rsa.RSAPrivateKey,
    user: User,
) -> None:
    old_file = write_keys_file(tmp_path, "old", [{"kid": "old", "secret": STRONG}])
    async with RunningApp(create_app(make_settings(jwt_keys_file=old_file))) as old_app:
        old_token = issue_access_token(old_app.state.keyring, old_app.state.settings, user.id)
        old_fingerprint = old_app.state.keyring.fingerprint
    new_file = write_keys_file(
        tmp_path,
        "new",
        [
            {"kid": "new", "algorithm": "RS256", "private_key": rsa_private_key},
            {"kid": "old", "algorithm": "HS256", "secret": STRONG},
        ],
    )
    async with RunningApp(create_app(make_settings(jwt_keys_file=new_file))) as app:
        assert (await _me(app, old_token)).status_code == 200
        new_token = issue_access_token(app.state.keyring, app.state.settings, user.id)
        assert jwt.get_unverified_header(new_token)["kid"] == "new"
        assert (await _me(app, new_token)).status_code == 200
        assert app.state.keyring.fingerprint != old_fingerprint
        async with make_client(app) as client:
            health = (await client.get("/healthz")).json()
        assert health["jwt"]["current_kid"] == "new"


async def test_verify_only_key_verifies_but_cannot_be_current(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    ed25519_private_key: ed25519.Ed25519PrivateKey,
    user: User,
) -> None:
    ring = write_keys_file(
        tmp_path,
        "hs",
        [
            {"kid": "hs", "secret": STRONG},
            {"kid": "ed", "algorithm": "EdDSA", "public_key": ed25519_private_key.public_key()},
        ],
    )
    settings = make_settings(jwt_keys_file=ring)
    keyring, _ = load_keyring_file(ring, production=True)
    # A token from the instance holding the Ed25519 private key verifies here.
    claims = base_claims(user.id, settings)
    token = jwt.encode(claims, ed25519_private_key, algorithm="EdDSA", headers={"kid": "ed"})
    assert verify_access_token(keyring, settings, token).sub == user.id
    bad = write_keys_file(
        tmp_path,
        "ed",
        [{"kid": "ed", "algorithm": "EdDSA", "public_key": ed25519_private_key.public_key()}],
    )
    with pytest.raises(ConfigurationError, match="no private key"):
        load_keyring_file(bad, production=False)


def test_fingerprint_never_contains_key_material(tmp_path: Path) -> None:
    ring = write_keys_file(tmp_path, "k", [{"kid": "k", "secret": STRONG}])
    keyring, _ = load_keyring_file(ring, production=True)
    fingerprint = keyring.fingerprint
    assert len(fingerprint) == 16
    assert fingerprint not in STRONG.encode().hex()
    assert STRONG not in repr(keyring)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([{"kid": "k", "secret": "short"}], "too short"),
        ([{"kid": "k", "secret": "changethis"}], "well-known default"),
    ],
)
def test_production_refuses_weak_secrets_in_the_file(
    tmp_path: Path, keys: list[dict[str, Any]], message: str
) -> None:
    ring = write_keys_file(tmp_path, "k", keys)
    with pytest.raises(ConfigurationError, match=message):
        load_keyring_file(ring, production=True)
    _, note = load_keyring_file(ring, production=False)
    assert note is not None
    assert message in note


def test_production_refuses_small_rsa_keys(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the point)
    ring = write_keys_file(
        tmp_path, "r", [{"kid": "r", "algorithm": "RS256", "private_key": small}]
    )
    with pytest.raises(ConfigurationError, match="1024 bits"):
        load_keyring_file(ring, production=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('current = "a"\n', "lists no keys"),
        ('current = "b"\n[[keys]]\nkid = "a"\nsecret = "' + STRONG + '"\n', "does not name"),
        ('[[keys]]\nkid = "a"\nalgorithm = "none"\n', "not supported"),
        ('[[keys]]\nkid = "a"\nalgorithm = "RS256"\npublic_key = "missing.pem"\n', "cannot read"),
        ("not toml [", "cannot be read"),
        (('[[keys]]\nkid = "a"\nsecret = "' + STRONG + '"\n') * 2, "twice"),
    ],
)
def test_broken_keys_file_says_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=message):
        load_keyring_file(path, production=False)


def test_app_refuses_to_start_with_a_weak_file_key_in_production(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ring = write_keys_file(tmp_path, "k", [{"kid": "k", "secret": "secret"}])
    with pytest.raises(ConfigurationError, match="KIBAN_JWT_KEYS_FILE"):
        create_app(make_settings(env="production", secret_key=None, jwt_keys_file=ring))
