"""Password hashing (Argon2id through pwdlib) and the password policy."""

from __future__ import annotations

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

_hasher = PasswordHash((Argon2Hasher(),))

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 128


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    return _hasher.verify(password, password_hash)


# Verifying against this hash when the email is unknown keeps the response time the same as for a
# wrong password, so timing does not reveal which emails have accounts.
DUMMY_HASH = hash_password("kiban-dummy-password-for-timing")
