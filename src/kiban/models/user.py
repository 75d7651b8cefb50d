"""Users: the accounts that own everything else."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from kiban.models.base import Base, TimestampMixin, new_uuid


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


class User(TimestampMixin, Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_uuid)
    email: Mapped[str] = mapped_column(String(320), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.USER)
    is_active: Mapped[bool] = mapped_column(default=True)
    last_login_at: Mapped[datetime | None] = mapped_column(default=None)
    # Plan set by an admin (quota migration 0005); None = the plans file's default plan.
    # Billing's subscription state takes precedence (billing.entitlements.resolve_entitlement).
    plan: Mapped[str | None] = mapped_column(String(64), default=None)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN
