"""Auth tables: refresh tokens (rotated, in families), API keys, failed sign-in attempts, and the
change counter that keeps every process's API-key cache exact."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core import clock
from kiban.models.base import Base, BigIntPK, TimestampMixin, new_uuid


class RefreshToken(TimestampMixin, Base):
    """One opaque refresh token (only its SHA-256 is stored).

    Every sign-in starts a family; each refresh revokes the presented token and issues the next
    one in the same family. Presenting a revoked member again revokes the whole family.
    """

    __tablename__ = "refresh_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_uuid)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    family_id: Mapped[uuid.UUID] = mapped_column(index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # rotated | reuse_detected | logout | password_changed
    revoked_reason: Mapped[str | None] = mapped_column(String(32), default=None)


class ApiKey(TimestampMixin, Base):
    """A long-lived key (``kb_<lookup_id>_<secret>``); only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_uuid)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    # Public part of the key: the one indexed lookup on the gateway's hot path.
    lookup_id: Mapped[str] = mapped_column(String(16), unique=True, index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    @property
    def prefix(self) -> str:
        """What lists show: enough to recognize the key, useless to an attacker."""
        return f"kb_{self.lookup_id}"


class LoginAttempt(Base):
    """A sign-in attempt in flight or failed; counted per account and per client address."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_email_created_at", "email", "created_at"),
        Index("ix_login_attempts_address_created_at", "address", "created_at"),
        Index("ix_login_attempts_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320))
    address: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=clock.now)


class AuthEpoch(Base):
    """One row: bumped by triggers (migration 0012) in every transaction that changes what an
    API key authenticates as, so that caches can tell when to drop what they hold."""

    __tablename__ = "auth_epoch"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger)


class AuthChange(Base):
    """Per user, the ``auth_epoch`` value of the latest change to its keys, account or billing.

    No foreign key: the row of a deleted user must stay, so that caches drop its keys too.
    """

    __tablename__ = "auth_changes"

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, index=True)
