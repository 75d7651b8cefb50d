"""What Alembic compares: the models against a database's schema (``alembic check``, the tests)."""

from __future__ import annotations

from typing import Any

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

import kiban.models  # noqa: F401  (registers every table)
from kiban.models.base import Base


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Leave out of autogenerate what the models cannot express (FTS virtual and shadow tables).

    Such tables are listed in ``Base.metadata.info["unmanaged_tables"]`` (prefix match) by the
    module that creates them in a migration.
    """
    if type_ == "table" and reflected and compare_to is None and name:
        prefixes = tuple(Base.metadata.info.get("unmanaged_tables", ()))
        if prefixes and name.startswith(prefixes):
            return False
    return True


def compare_models(connection: Connection) -> list[Any]:
    """The differences between the models and the database's schema (empty when they agree)."""
    from alembic.autogenerate import compare_metadata

    context = MigrationContext.configure(
        connection, opts={"include_object": include_object, "compare_type": True}
    )
    diff: list[Any] = compare_metadata(context, Base.metadata)
    return diff
