"""Identifiers made on the hot path: unique, not secret.

``uuid.uuid4()`` and ``os.urandom`` read the kernel's random source, a system call that took
tens of microseconds under load here, twice per AI call (its request id and its quota
reservation). These need uniqueness only, so they come from ``random``'s generator: seeded
from the kernel's randomness at start-up and again in every forked child (CPython's ``random``
re-seeds after ``fork``), 128 bits per id. Secrets (tokens, keys, CSRF) keep ``secrets``.
"""

from __future__ import annotations

import random
import uuid

_bits = random.getrandbits


def request_id() -> str:
    """32 hex characters, like a uuid4's ``hex``."""
    return f"{_bits(128):032x}"


def unique_uuid() -> uuid.UUID:
    """A version-4 UUID from the generator (same layout as ``uuid.uuid4()``)."""
    return uuid.UUID(int=_bits(128), version=4)
