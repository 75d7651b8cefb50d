"""Auth's ``kiban doctor`` check: the JWT signing keys."""

from __future__ import annotations

from kiban.auth.keys import load_keyring
from kiban.core.doctor import DoctorContext, Finding, doctor_check
from kiban.settings import ConfigurationError, secret_problem

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
