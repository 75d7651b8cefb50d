"""A ledger record as JSON and back, for records that travel outside the database first (the
Redis settle stream): orjson out, and back to the columns' own Python types by the model's
column types, so that a record read back inserts exactly as the original would have.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import orjson
from sqlalchemy import Table, TypeDecorator

from kiban.models import UsageRecord
from kiban.usage.ledger import Record


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact: a float would round the cost
    if isinstance(value, uuid.UUID):
        return str(value)  # a subclass orjson does not take as one (asyncpg's UUID)
    raise TypeError(f"cannot encode {type(value).__name__} in a ledger record")


def record_to_json(record: Record) -> bytes:
    """The record as compact JSON (UUIDs and datetimes as text, Decimals as exact strings)."""
    return orjson.dumps(record, default=_default)


def _parsers() -> dict[str, Callable[[Any], Any]]:
    by_type: dict[type, Callable[[Any], Any]] = {
        uuid.UUID: uuid.UUID,
        datetime: datetime.fromisoformat,
        Decimal: Decimal,
    }
    parsers: dict[str, Callable[[Any], Any]] = {}
    for column in cast(Table, UsageRecord.__table__).columns:
        kind = column.type
        kind = kind.impl_instance if isinstance(kind, TypeDecorator) else kind
        try:
            python_type = kind.python_type
        except NotImplementedError:  # JSON and the like: orjson gives them back as they were
            continue
        if python_type in by_type:
            parsers[column.name] = by_type[python_type]
    return parsers


_PARSERS = _parsers()


def record_from_json(data: bytes | str) -> Record:
    """A record written by ``record_to_json``, with its UUIDs, datetimes and Decimals back."""
    record: Record = orjson.loads(data)
    for name, parse in _PARSERS.items():
        value = record.get(name)
        if value is not None:
            record[name] = parse(value)
    return record
