"""ORM models, one module per table family. Importing this package registers every table."""

from kiban.models.base import Base
from kiban.models.usage import UsageRecord, UsageStatus
from kiban.models.user import Role, User

__all__ = ["Base", "Role", "UsageRecord", "UsageStatus", "User"]
