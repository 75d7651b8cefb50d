"""Each 401 code, produced by a real forged or broken credential, with its RFC 6750 challenge."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.auth.exceptions import AuthenticationError
from kiban.auth.verify import issue_access_token
from kiban.core import clock
from kiban.models import User
from tests.auth.conftest import assert_auth_error, base_claims, bearer, forge
from tests.conftest import TEST_SECRET, auth_headers


def _kid(app: FastAPI) -> str:
    kid: str = app.state.keyring.current.kid
    return kid


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/auth/me", headers=bearer(token))


async def test_valid_token_is_accepted(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    assert (await client.get("/auth/me", headers=user_headers)).status_code == 200


async def test_missing_credentials(client: httpx.AsyncClient) -> None:
    response = await client.get("/auth/me")
    assert_auth_error(response, "missing_credentials")
    # No token was sent, so RFC 6750 says: no error attribute in the challenge.
    assert response.headers["www-authenticate"] == 'Bearer realm="kiban"'


@pytest.mark.parametrize(
    "authorization",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "Token abc", "Bearer not-a-jwt", "Bearer a.b"],
)
async def test_malformed_authorization(client: httpx.AsyncClient, authorization: str) -> None:
    response = await client.get("/auth/me", headers={"Authorization": authorization})
    assert_auth_error(response, "malformed_token")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_malformed_token_parts(client: httpx.AsyncClient) -> None:
    not_json = "bm90IGpzb24.bm90IGpzb24.c2ln"
    assert_auth_error(await me(client, not_json), "malformed_token")
    array_header = f"{base64.urlsafe_b64encode(json.dumps([1]).encode()).decode()}.e30.c2ln"
    assert_auth_error(await me(client, array_header), "malformed_token")
    too_deep = f"{base64.urlsafe_b64encode(b'[' * 5000).decode()}.e30.c2ln"
    assert_auth_error(await me(client, too_deep), "malformed_token")


async def test_missing_claim_is_malformed(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    claims = base_claims(user.id, app.state.settings, jti=None)
    token = jwt.encode(claims, TEST_SECRET, algorithm="HS256", headers={"kid": _kid(app)})
    error = assert_auth_error(await me(client, token), "malformed_token")
    assert "jti" in error["message"]


async def test_wrong_key_is_invalid_signature(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    claims = base_claims(user.id, app.state.settings)
    other_secret = "another-instance-secret-that-is-long-enough-42"
    token = jwt.encode(claims, other_secret, algorithm="HS256", headers={"kid": _kid(app)})
    response = await me(client, token)
    error = assert_auth_error(response, "invalid_signature")
    assert "fingerprint" in error["hint"]
    assert 'error_description="' in response.headers["www-authenticate"]


async def test_tampered_payload_is_invalid_signature(
    app: FastAPI, client: httpx.AsyncClient, user: User, admin: User
) -> None:
    token = issue_access_token(app.state.keyring, app.state.settings, user.id)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = str(admin.id)  # try to become the admin
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert_auth_error(
        await me(client, f"{header}.{forged_payload}.{signature}"), "invalid_signature"
    )


async def test_alg_none_is_refused(app: FastAPI, client: httpx.AsyncClient, user: User) -> None:
    claims = base_claims(user.id, app.state.settings)
    for alg in ("none", "None", "NONE"):
        token = forge({"alg": alg, "typ": "JWT", "kid": _kid(app)}, claims, hmac_secret=None)
        error = assert_auth_error(await me(client, token), "algorithm_not_allowed")
        assert "HS256" in error["message"]


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_other_hmac_algorithm_is_refused(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    claims = base_claims(user.id, app.state.settings)
    token = jwt.encode(claims, TEST_SECRET, algorithm="HS512", headers={"kid": _kid(app)})
    assert_auth_error(await me(client, token), "algorithm_not_allowed")


async def test_unknown_kid(app: FastAPI, client: httpx.AsyncClient, user: User) -> None:
    claims = base_claims(user.id, app.state.settings)
    token = jwt.encode(claims, TEST_SECRET, algorithm="HS256", headers={"kid": "rotated-out"})
    error = assert_auth_error(await me(client, token), "unknown_key_id")
    assert "rotated-out" in error["message"]
    no_kid = jwt.encode(claims, TEST_SECRET, algorithm="HS256")
    assert_auth_error(await me(client, no_kid), "unknown_key_id")


async def test_forged_header_values_stay_out_of_the_challenge_header(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    claims = base_claims(user.id, app.state.settings)
    # The messages quote the forger's kid and alg; a header value must stay ASCII (else a 500).
    for header, code, quoted in (
        ({"alg": "HS256", "kid": '鍵"\\\r\n'}, "unknown_key_id", "鍵"),
        ({"alg": "HS256\u00e9\u2028", "kid": _kid(app)}, "algorithm_not_allowed", "HS256é"),
    ):
        response = await me(client, forge(header, claims, TEST_SECRET.encode()))
        error = assert_auth_error(response, code)
        assert quoted in error["message"]  # the JSON body keeps it as it was
        description = response.headers["www-authenticate"].split("error_description=")[1]
        assert description.isascii()
        assert description.count('"') == 2
        assert "\\" not in description


async def test_expired_token(app: FastAPI, client: httpx.AsyncClient, user: User) -> None:
    with clock.shifted(-timedelta(hours=1)):
        token = issue_access_token(app.state.keyring, app.state.settings, user.id)
    error = assert_auth_error(await me(client, token), "token_expired")
    assert "/auth/refresh" in error["hint"]


async def test_expiry_allows_the_configured_leeway(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    ttl = app.state.settings.access_token_ttl_seconds
    leeway = app.state.settings.jwt_leeway_seconds
    start = clock.now()
    with clock.frozen(start):
        token = issue_access_token(app.state.keyring, app.state.settings, user.id)
    with clock.frozen(start + timedelta(seconds=ttl + leeway - 1)):
        assert (await me(client, token)).status_code == 200
    with clock.frozen(start + timedelta(seconds=ttl + leeway + 1)):
        assert_auth_error(await me(client, token), "token_expired")


async def test_future_nbf_is_not_yet_valid(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    with clock.shifted(timedelta(minutes=5)):  # the issuer's clock runs 5 minutes ahead
        token = issue_access_token(app.state.keyring, app.state.settings, user.id)
    error = assert_auth_error(await me(client, token), "token_not_yet_valid")
    assert "clock" in error["hint"]


async def test_wrong_audience(app: FastAPI, client: httpx.AsyncClient, user: User) -> None:
    claims = base_claims(user.id, app.state.settings, aud="another-service")
    token = jwt.encode(claims, TEST_SECRET, algorithm="HS256", headers={"kid": _kid(app)})
    assert_auth_error(await me(client, token), "invalid_audience")
    listed = base_claims(user.id, app.state.settings, aud=["another-service", "kiban"])
    token = jwt.encode(listed, TEST_SECRET, algorithm="HS256", headers={"kid": _kid(app)})
    assert (await me(client, token)).status_code == 200


async def test_wrong_issuer(app: FastAPI, client: httpx.AsyncClient, user: User) -> None:
    claims = base_claims(user.id, app.state.settings, iss="https://evil.example")
    token = jwt.encode(claims, TEST_SECRET, algorithm="HS256", headers={"kid": _kid(app)})
    assert_auth_error(await me(client, token), "invalid_issuer")


async def test_inactive_user(
    app: FastAPI, client: httpx.AsyncClient, user: User, session: AsyncSession
) -> None:
    headers = auth_headers(app, user)
    user.is_active = False
    await session.commit()
    assert_auth_error(await client.get("/auth/me", headers=headers), "user_inactive")


async def test_deleted_user(
    app: FastAPI, client: httpx.AsyncClient, user: User, session: AsyncSession
) -> None:
    headers = auth_headers(app, user)
    await session.delete(user)
    await session.commit()
    assert_auth_error(await client.get("/auth/me", headers=headers), "user_not_found")


async def test_subject_that_is_not_a_user_id(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    claims = base_claims(user.id, app.state.settings, sub="root")
    token = jwt.encode(claims, TEST_SECRET, algorithm="HS256", headers={"kid": _kid(app)})
    assert_auth_error(await me(client, token), "malformed_token")


async def test_bad_api_key(client: httpx.AsyncClient) -> None:
    response = await me(client, "kb_0123456789ab_" + "x" * 43)
    assert_auth_error(response, "invalid_api_key")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_every_401_code_is_a_documented_one() -> None:
    def subclasses(cls: type) -> set[type]:
        found = set(cls.__subclasses__())
        return found.union(*(subclasses(c) for c in found))

    documented = {
        "missing_credentials",
        "malformed_token",
        "invalid_signature",
        "unknown_key_id",
        "algorithm_not_allowed",
        "token_expired",
        "token_not_yet_valid",
        "invalid_audience",
        "invalid_issuer",
        "token_revoked",
        "user_inactive",
        "user_not_found",
        "invalid_api_key",
        "invalid_credentials",  # /auth/token only
    }
    assert {cls.code for cls in subclasses(AuthenticationError)} == documented


async def test_future_iat_is_not_yet_valid(
    app: FastAPI, client: httpx.AsyncClient, user: User
) -> None:
    future = int(clock.now().timestamp()) + 3600
    claims = base_claims(user.id, app.state.settings, iat=future)
    token = jwt.encode(claims, TEST_SECRET, algorithm="HS256", headers={"kid": _kid(app)})
    error = assert_auth_error(await me(client, token), "token_not_yet_valid")
    assert "iat" in error["message"]
