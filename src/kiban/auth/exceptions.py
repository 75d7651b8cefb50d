"""Authentication errors: each 401 names what failed and what usually causes it.

Every ``AuthenticationError`` renders ``WWW-Authenticate: Bearer realm="kiban"`` and, for a bad
token, ``error="invalid_token", error_description="…"`` (RFC 6750 §3).

Hierarchy::

    Unauthorized (401)
    └── AuthenticationError
        ├── MissingCredentials       missing_credentials   (no error= in the challenge)
        ├── MalformedToken           malformed_token
        ├── InvalidSignature         invalid_signature
        ├── UnknownKeyId             unknown_key_id
        ├── AlgorithmNotAllowed      algorithm_not_allowed
        ├── TokenExpired             token_expired
        ├── TokenNotYetValid         token_not_yet_valid
        ├── InvalidAudience          invalid_audience
        ├── InvalidIssuer            invalid_issuer
        ├── TokenRevoked             token_revoked (refresh.FamilyRevoked: a replay)
        ├── UserInactive             user_inactive
        ├── UserNotFound             user_not_found
        ├── InvalidApiKey            invalid_api_key
        └── InvalidCredentials       invalid_credentials   (/auth/token; no error= either)
    Forbidden (403)
    ├── RoleRequired                 role_required         (``required_role`` in the body)
    ├── AccessTokenRequired          access_token_required (an API key managing keys/password)
    └── WrongPassword                wrong_password
    NotFound (404) ── ApiKeyNotFound api_key_not_found
    Conflict (409) ── EmailTaken     email_taken
    TooManyRequests (429) ── TooManyAttempts  too_many_attempts (Retry-After, ``retry_after``)
"""

from __future__ import annotations

from typing import Any

from kiban.core.errors import Conflict, Forbidden, NotFound, TooManyRequests, Unauthorized


class AuthenticationError(Unauthorized):
    invalid_token = True

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        challenge = 'Bearer realm="kiban"'
        if self.invalid_token:
            # RFC 6750 allows printable ASCII but " and \ here, and a header must be latin-1:
            # messages quote the token's own kid and alg, which a forger picks.
            description = "".join(
                "'" if c == '"' else c if " " <= c <= "~" and c != "\\" else "?"
                for c in self.message
            )
            challenge += f', error="invalid_token", error_description="{description}"'
        self.headers.setdefault("WWW-Authenticate", challenge)


class MissingCredentials(AuthenticationError):
    code = "missing_credentials"
    invalid_token = False
    default_message = "No credentials were sent."
    default_hint = "Send 'Authorization: Bearer <access token or kb_ API key>'."


class MalformedToken(AuthenticationError):
    code = "malformed_token"
    default_message = "The token is not a well-formed JWT."
    default_hint = (
        "Send the access_token from /auth/token as is, without quotes or a second 'Bearer'."
    )


class InvalidSignature(AuthenticationError):
    code = "invalid_signature"
    default_message = "The token's signature does not match."
    default_hint = (
        "The token was signed with a different key or was altered. Compare the key fingerprint "
        "in /healthz across instances: they must share KIBAN_SECRET_KEY or the key ring."
    )


class UnknownKeyId(AuthenticationError):
    code = "unknown_key_id"
    default_hint = (
        "The key that signed this token is not in this server's key ring: it was rotated out, or "
        "instances have different rings. Compare the key fingerprint in /healthz."
    )

    def __init__(self, kid: object) -> None:
        if kid is None:
            super().__init__("The token has no key id (kid header); this server requires one.")
        else:
            super().__init__(f"The token's key id {kid!r} is not known to this server.")


class AlgorithmNotAllowed(AuthenticationError):
    code = "algorithm_not_allowed"
    default_hint = "Tokens must be signed with the algorithm of the key named by their kid."

    def __init__(self, alg: object, expected: str) -> None:
        super().__init__(f"The token's algorithm {alg!r} is not allowed (expected {expected}).")


class TokenExpired(AuthenticationError):
    code = "token_expired"
    default_message = "The token has expired."
    default_hint = (
        "Get a new access token with POST /auth/refresh. If it expired at once, check the clocks "
        "of the issuing and verifying machines."
    )


class TokenNotYetValid(AuthenticationError):
    code = "token_not_yet_valid"
    default_message = "The token is not valid yet (nbf is in the future)."
    default_hint = "The issuing machine's clock is ahead of this one: check NTP on both."


class InvalidAudience(AuthenticationError):
    code = "invalid_audience"
    default_hint = "The token was issued for another service; check KIBAN_JWT_AUDIENCE."

    def __init__(self, expected: str) -> None:
        super().__init__(f"The token's audience is not {expected!r}.")


class InvalidIssuer(AuthenticationError):
    code = "invalid_issuer"
    default_hint = "The token was issued by another service; check KIBAN_JWT_ISSUER."

    def __init__(self, expected: str) -> None:
        super().__init__(f"The token's issuer is not {expected!r}.")


class TokenRevoked(AuthenticationError):
    code = "token_revoked"
    default_message = "The token has been revoked."
    default_hint = "Sign in again."


class UserInactive(AuthenticationError):
    code = "user_inactive"
    default_message = "This account is deactivated."
    default_hint = "Ask an administrator to reactivate it."


class UserNotFound(AuthenticationError):
    code = "user_not_found"
    default_message = "The token's user does not exist."
    default_hint = "The account was deleted, or the token comes from another database."


class InvalidApiKey(AuthenticationError):
    code = "invalid_api_key"
    default_message = "The API key is not valid."
    default_hint = "The key was revoked or mistyped; create a new one with POST /auth/api-keys."


class RoleRequired(Forbidden):
    code = "role_required"  # the body names the role in `required_role`

    def __init__(self, role: str) -> None:
        super().__init__(f"This needs the {role!r} role.", extra={"required_role": role})


class AccessTokenRequired(Forbidden):
    code = "access_token_required"
    default_message = "API keys cannot manage API keys or passwords."
    default_hint = "Sign in with POST /auth/token and use the access token for this request."


class InvalidCredentials(AuthenticationError):
    code = "invalid_credentials"
    invalid_token = False
    # One message for an unknown email and a wrong password: it must not reveal which it was.
    default_message = "The email or password is not correct."
    default_hint = "Check both; after repeated failures sign-in is paused for a while."


class TooManyAttempts(TooManyRequests):
    code = "too_many_attempts"
    default_message = "Too many failed sign-in attempts."

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            hint=f"Wait {retry_after} seconds before trying again.",
            headers={"Retry-After": str(retry_after)},
            extra={"retry_after": retry_after},
        )


class EmailTaken(Conflict):
    code = "email_taken"
    default_message = "An account with this email already exists."
    default_hint = "Sign in with POST /auth/token instead, or use another email."


class WrongPassword(Forbidden):
    code = "wrong_password"
    default_message = "The current password is not correct."


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"
    default_message = "You have no active API key with this id."
