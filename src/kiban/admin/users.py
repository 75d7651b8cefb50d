"""Admin user management: list accounts (paginated), change role or active state, delete.

``UserUpdate`` and ``update_user`` are meant to grow: a domain that adds an admin-editable field
(plan, quota override …) adds it to ``UserUpdate`` and a step to ``update_user``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.admin.analytics import Window
from kiban.auth import DEACTIVATED, AdminUser, UserOut, revoke_user
from kiban.core import clock
from kiban.core.db import SessionDep
from kiban.core.errors import Conflict, NotFound
from kiban.knowledge import forget_owner
from kiban.models import Role, User
from kiban.quota import QuotaAdmission, QuotaAdmissionDep, grant_extra_tokens, set_plan

router = APIRouter(prefix="/admin/users", tags=["admin"])


class UserNotFoundError(NotFound):
    code = "no_such_user"
    default_message = "No user with this id."


class CannotChangeSelf(Conflict):
    code = "cannot_change_self"
    default_message = "Admins cannot demote or deactivate themselves."
    default_hint = "Ask another admin, so that an instance never loses its last admin by accident."


class UserPage(BaseModel):
    items: list[UserOut]
    total: int
    limit: int
    offset: int


class UserUpdate(BaseModel):
    """Fields an admin may change; omitted fields stay as they are."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    is_active: bool | None = None
    # Quotas (quota/service.py): a plan from the plans file (null: back to the default
    # plan), and extra tokens on top of the plan for the current quota period (replaces).
    plan: str | None = Field(default=None, max_length=64)
    quota_override: int | None = Field(default=None, ge=0, le=10**15)


async def list_users(
    session: AsyncSession,
    *,
    limit: int,
    offset: int,
    email: str | None = None,
    role: Role | None = None,
    is_active: bool | None = None,
) -> tuple[list[User], int]:
    """A page of users, oldest first, and the total matching the filters."""
    query = select(User)
    if email:
        query = query.where(User.email.contains(email.strip().lower(), autoescape=True))
    if role is not None:
        query = query.where(User.role == role)
    if is_active is not None:
        query = query.where(User.is_active == is_active)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(
        query.order_by(User.created_at, User.id).limit(limit).offset(offset)
    )
    return list(rows), int(total or 0)


@dataclass(frozen=True)
class UserCounts:
    """Registered accounts: all of them, the active ones, and those created in a window."""

    total: int
    active: int
    joined: int


async def count_users(session: AsyncSession, window: Window) -> UserCounts:
    """How many accounts exist, how many are active, and how many were created in the window."""
    row = (
        await session.execute(
            select(
                func.count(),
                func.count().filter(User.is_active.is_(True)),
                func.count().filter(User.created_at >= window.start, User.created_at < window.end),
            ).select_from(User)
        )
    ).one()
    total, active, joined = (int(v or 0) for v in row)
    return UserCounts(total=total, active=active, joined=joined)


async def update_user(
    session: AsyncSession,
    actor: User,
    user_id: uuid.UUID,
    changes: UserUpdate,
    admission: QuotaAdmission | None = None,
) -> User:
    """Apply an admin's changes to a user."""
    user = await session.get(User, user_id)
    if user is None:
        raise UserNotFoundError()
    fields = changes.model_dump(exclude_unset=True)
    if user.id == actor.id and (
        fields.get("role", Role.ADMIN) != Role.ADMIN or fields.get("is_active", True) is False
    ):
        raise CannotChangeSelf()
    if fields.get("role") is not None:
        user.role = fields["role"]
    if fields.get("is_active") is not None and fields["is_active"] != user.is_active:
        user.is_active = fields["is_active"]
        if not user.is_active:
            # Access tokens and API keys are refused at once (user_inactive); refresh tokens go.
            await revoke_user(session, user.id, DEACTIVATED)
    if admission is not None and "plan" in fields:
        set_plan(admission, user, fields["plan"])
    await session.flush()
    if admission is not None and fields.get("quota_override") is not None:
        await grant_extra_tokens(admission, session, user, fields["quota_override"], clock.now())
    return user


@router.get("", response_model=UserPage)
async def get_users(
    _: AdminUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # past BIGINT: a driver overflow
    email: Annotated[str | None, Query(max_length=320, description="Substring match.")] = None,
    role: Role | None = None,
    is_active: bool | None = None,
) -> UserPage:
    """List users, oldest first (admin)."""
    users, total = await list_users(
        session, limit=limit, offset=offset, email=email, role=role, is_active=is_active
    )
    return UserPage(
        items=[UserOut.model_validate(u) for u in users], total=total, limit=limit, offset=offset
    )


@router.patch("/{user_id}", response_model=UserOut)
async def patch_user(
    user_id: uuid.UUID,
    changes: UserUpdate,
    admin: AdminUser,
    session: SessionDep,
    admission: QuotaAdmissionDep,
) -> UserOut:
    """Change a user's role, active state, plan or extra tokens for this period (admin)."""
    user = await update_user(session, admin, user_id, changes, admission)
    return UserOut.model_validate(user)


async def delete_user(session: AsyncSession, actor: User, user_id: uuid.UUID) -> None:
    """Delete a user: their documents first (vectors and their share of the search statistics
    with them), then the account; the rest follows by foreign key (the ledger keeps its rows)."""
    user = await session.get(User, user_id)
    if user is None:
        raise UserNotFoundError()
    if user.id == actor.id:
        raise CannotChangeSelf("Admins cannot delete themselves.")
    await forget_owner(session, user.id)
    await session.delete(user)
    await session.flush()


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_user(user_id: uuid.UUID, admin: AdminUser, session: SessionDep) -> None:
    """Delete a user and everything they own (admin)."""
    await delete_user(session, admin, user_id)
