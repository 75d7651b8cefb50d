"""Password hashing (Argon2id through pwdlib) and the password policy."""

from __future__ import annotations

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

_hasher = PasswordHash((Argon2Hasher(),))

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 128


def hash_password(password: str) -> str:
    """An Argon2id hash of the password."""
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    """Whether the password matches the hash (constant time)."""
    return _hasher.verify(password, password_hash)


# Verifying against this hash when the email is unknown keeps the response time the same as for a
# wrong password, so timing does not reveal which emails have accounts.
DUMMY_HASH = hash_password("kiban-dummy-password-for-timing")


# A handful of passwords that pass the length rule but appear at the top of every breach list.
_COMMON_PASSWORDS = frozenset(
    {
        "password123",
        "password1234",
        "1234567890",
        "12345678910",
        "qwertyuiop",
        "0123456789",
        "1q2w3e4r5t",
        "iloveyou12",
        "passwordpassword",
        "administrator",
    }
)


def password_problem(password: str) -> str | None:
    """What is wrong with a new password, in words a person can act on, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"must be at least {MIN_PASSWORD_LENGTH} characters long"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"must be at most {MAX_PASSWORD_LENGTH} characters long"
    if not password.strip():
        return "must not be only spaces"
    if len(set(password)) < 4:
        return "must use more than 3 different characters"
    if password.lower() in _COMMON_PASSWORDS:
        return "is one of the most common passwords; choose another"
    return None
