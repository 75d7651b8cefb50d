"""The one source of "now", so expiry, periods and token lifetimes are testable without sleeping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

_frozen: datetime | None = None
_offset = timedelta(0)


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    if _frozen is not None:
        return _frozen
    return datetime.now(UTC) + _offset


def timestamp() -> float:
    """The current time as a POSIX timestamp (float seconds)."""
    if _frozen is None and not _offset:
        return time.time()
    return now().timestamp()


@contextmanager
def frozen(at: datetime) -> Iterator[None]:
    """Freeze `now()` at a fixed instant (tests)."""
    global _frozen
    previous, _frozen = _frozen, at.astimezone(UTC)
    try:
        yield
    finally:
        _frozen = previous


@contextmanager
def shifted(by: timedelta) -> Iterator[None]:
    """Move `now()` by an offset from the real clock (tests: clock drift, expiry)."""
    global _offset
    previous, _offset = _offset, _offset + by
    try:
        yield
    finally:
        _offset = previous
