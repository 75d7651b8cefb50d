"""The JWT key ring: keys addressed by ``kid``; the current one signs, every key verifies.

Two ways to configure it:

- ``KIBAN_SECRET_KEY``: one HS256 key whose kid is derived from the secret (the simple case).
- ``KIBAN_JWT_KEYS_FILE``: a TOML file listing several keys (rotation without logging everyone
  out, asymmetric algorithms)::

      current = "2026-11"

      [[keys]]
      kid = "2026-11"
      algorithm = "RS256"                  # HS256/384/512, RS256/384/512 or EdDSA
      private_key = "keys/2026-11.pem"     # PEM path, relative to this file
      public_key = "keys/2026-11.pub.pem"  # optional when private_key is given

      [[keys]]
      kid = "2026-05"
      algorithm = "HS256"
      secret = "…"                         # or secret_file = "path"

  A key with only ``public_key`` verifies but cannot sign (it cannot be ``current``).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import Algorithm, get_default_algorithms

from kiban.settings import ConfigurationError, Settings, secret_problem

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512"})
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | RSA_ALGORITHMS | {"EdDSA"}
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    # Never in reprs (logs, tracebacks): a secret str for HMAC, a key object otherwise.
    signing_key: Any = field(repr=False)  # None: this key only verifies
    verification_key: Any = field(repr=False)
    verification_material: bytes = field(repr=False, default=b"")

    @property
    def can_sign(self) -> bool:
        return self.signing_key is not None

    @property
    def is_hmac(self) -> bool:
        return self.algorithm in HMAC_ALGORITHMS

    @cached_property
    def verifier(self) -> tuple[Algorithm, Any]:
        """PyJWT's algorithm object and the key prepared for it (computed once)."""
        algorithm = get_default_algorithms()[self.algorithm]
        return algorithm, algorithm.prepare_key(self.verification_key)

    def describe(self) -> str:
        """A line for people: kid, algorithm, size; never the key."""
        if self.is_hmac:
            size = f"{len(self.verification_material)}-byte secret"
        elif isinstance(self.verification_key, rsa.RSAPublicKey):
            size = f"{self.verification_key.key_size}-bit RSA"
        else:
            size = "Ed25519"
        role = "signs and verifies" if self.can_sign else "verifies only"
        return f"{self.kid} ({self.algorithm}, {size}, {role})"


@dataclass(frozen=True)
class KeyRing:
    current: SigningKey
    keys: dict[str, SigningKey]
    source: str = "KIBAN_SECRET_KEY"

    @property
    def algorithms(self) -> list[str]:
        return sorted({k.algorithm for k in self.keys.values()})

    @property
    def fingerprint(self) -> str:
        """A short digest of every verification key: equal on instances that accept the same tokens.

        It never reveals a key: it is a SHA-256 over (kid, algorithm, key digest) triples.
        """
        digest = hashlib.sha256()
        for kid in sorted(self.keys):
            key = self.keys[kid]
            digest.update(kid.encode() + b"\0" + key.algorithm.encode() + b"\0")
            digest.update(hashlib.sha256(key.verification_material).digest())
        return digest.hexdigest()[:16]


def hmac_key(kid: str, secret: str, algorithm: str = "HS256") -> SigningKey:
    return SigningKey(kid, algorithm, secret, secret, secret.encode())


def load_keyring(settings: Settings) -> tuple[KeyRing, str | None]:
    """The key ring the settings describe, and a note to log (a generated development key)."""
    if settings.jwt_keys_file is not None:
        return load_keyring_file(settings.jwt_keys_file, production=settings.env == "production")
    secret, note = settings.signing_secret()
    key = hmac_key(_derived_kid(secret), secret)
    return KeyRing(current=key, keys={key.kid: key}), note


def _derived_kid(secret: str) -> str:
    # A kid derived from the key itself: two instances with different secrets disagree visibly.
    return "hs-" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def load_keyring_file(path: Path, *, production: bool) -> tuple[KeyRing, str | None]:
    """Read a TOML key ring; ``ConfigurationError`` names the file, the key and the fix."""
    where = f"KIBAN_JWT_KEYS_FILE ({path})"
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigurationError(f"{where} does not exist.") from e
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigurationError(f"{where} cannot be read: {e}") from e
    entries = document.get("keys")
    if not isinstance(entries, list) or not entries:
        raise ConfigurationError(f"{where} lists no keys: add at least one [[keys]] table.")
    keys: dict[str, SigningKey] = {}
    weak: list[str] = []
    for index, entry in enumerate(entries):
        key, problem = _load_entry(entry, path.parent, f"{where}, key #{index + 1}")
        if key.kid in keys:
            raise ConfigurationError(f"{where}: kid {key.kid!r} appears twice.")
        if problem:
            if production:
                raise ConfigurationError(f"{where}, key {key.kid!r}: {problem}.")
            weak.append(f"{key.kid} {problem}")
        keys[key.kid] = key
    current_kid = document.get("current")
    if current_kid is None and len(keys) == 1:
        current_kid = next(iter(keys))
    if not isinstance(current_kid, str) or current_kid not in keys:
        raise ConfigurationError(
            f"{where}: current = {current_kid!r} does not name one of its keys "
            f"({', '.join(sorted(keys))})."
        )
    current = keys[current_kid]
    if not current.can_sign:
        raise ConfigurationError(
            f"{where}: the current key {current_kid!r} has no private key or secret to sign with."
        )
    note = f"weak keys (refused in production): {'; '.join(weak)}" if weak else None
    return KeyRing(current=current, keys=keys, source=str(path)), note


def _load_entry(entry: object, base: Path, where: str) -> tuple[SigningKey, str | None]:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where} must be a table.")
    kid = entry.get("kid")
    algorithm = entry.get("algorithm", "HS256")
    if not isinstance(kid, str) or not kid:
        raise ConfigurationError(f"{where} has no kid.")
    if algorithm not in SUPPORTED_ALGORITHMS:
        raise ConfigurationError(
            f"{where} ({kid}): algorithm {algorithm!r} is not supported "
            f"(use one of {', '.join(sorted(SUPPORTED_ALGORITHMS))})."
        )
    if algorithm in HMAC_ALGORITHMS:
        secret = entry.get("secret")
        if secret is None and "secret_file" in entry:
            secret = _read(base, entry["secret_file"], where).decode().strip()
        if not isinstance(secret, str) or not secret:
            raise ConfigurationError(
                f"{where} ({kid}): an {algorithm} key needs secret or secret_file."
            )
        problem = secret_problem(secret)
        return hmac_key(kid, secret, algorithm), (f"secret {problem}" if problem else None)
    return _load_asymmetric(entry, base, f"{where} ({kid})", kid, algorithm)


def _load_asymmetric(
    entry: dict[str, Any], base: Path, where: str, kid: str, algorithm: str
) -> tuple[SigningKey, str | None]:
    private: Any = None
    public: Any = None
    try:
        if "private_key" in entry:
            private = serialization.load_pem_private_key(
                _read(base, entry["private_key"], where), password=None
            )
            public = private.public_key()
        if "public_key" in entry:
            public = serialization.load_pem_public_key(_read(base, entry["public_key"], where))
    except (ValueError, TypeError) as e:
        raise ConfigurationError(f"{where}: the PEM key cannot be loaded: {e}") from e
    if public is None:
        raise ConfigurationError(f"{where}: an {algorithm} key needs private_key or public_key.")
    expected: type[Any] = (
        rsa.RSAPublicKey if algorithm in RSA_ALGORITHMS else ed25519.Ed25519PublicKey
    )
    if not isinstance(public, expected):
        raise ConfigurationError(f"{where}: the key file does not hold an {algorithm} key.")
    if private is not None and private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ConfigurationError(f"{where}: private_key and public_key are not a pair.")
    material = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    problem = None
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        problem = f"RSA key is {public.key_size} bits (at least {MIN_RSA_BITS} are needed)"
    return SigningKey(kid, algorithm, private, public, material), problem


def _read(base: Path, name: object, where: str) -> bytes:
    if not isinstance(name, str):
        raise ConfigurationError(f"{where}: key paths must be strings.")
    path = (base / name).expanduser()
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigurationError(f"{where}: cannot read {path}: {e.strerror}.") from e
