"""The JWT key ring: keys addressed by ``kid``; the current one signs, every key verifies."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from kiban.settings import Settings

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    signing_key: Any  # secret str for HMAC, private key object for asymmetric algorithms
    verification_key: Any  # secret str for HMAC, public key object otherwise
    verification_material: bytes = field(repr=False, default=b"")


@dataclass(frozen=True)
class KeyRing:
    current: SigningKey
    keys: dict[str, SigningKey]

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
    secret, note = settings.signing_secret()
    key = hmac_key(_derived_kid(secret), secret)
    return KeyRing(current=key, keys={key.kid: key}), note


def _derived_kid(secret: str) -> str:
    # A kid derived from the key itself: two instances with different secrets disagree visibly.
    return "hs-" + hashlib.sha256(secret.encode()).hexdigest()[:8]
