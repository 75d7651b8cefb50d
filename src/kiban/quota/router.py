"""Usage visibility (``GET /me/usage``, ``GET /admin/users/{id}/usage``) and API key limits."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.auth import AdminUser, CurrentUser, TokenUser
from kiban.core import clock
from kiban.core.db import SessionDep
from kiban.models import ApiKey, User
from kiban.quota.dependencies import QuotaAdmissionDep
from kiban.quota.exceptions import NoSuchKey, NoSuchUser
from kiban.quota.schemas import KeyLimitsIn, KeyLimitsOut, UsageReport
from kiban.quota.service import key_limits, set_key_limits, usage_report

router = APIRouter(tags=["usage"])


async def _key(session: AsyncSession, key_id: uuid.UUID, owner: User | None) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None or (owner is not None and key.user_id != owner.id):
        raise NoSuchKey()  # another user's key is "not found", not "forbidden"
    return key


@router.get("/me/usage", response_model=UsageReport)
async def my_usage(
    user: CurrentUser, session: SessionDep, admission: QuotaAdmissionDep
) -> UsageReport:
    """Your plan, quota period, tokens and cost used and reserved, and rate-limit state."""
    return await usage_report(admission, session, user, clock.now())


@router.get("/admin/users/{user_id}/usage", response_model=UsageReport, tags=["admin"])
async def user_usage(
    user_id: uuid.UUID, _: AdminUser, session: SessionDep, admission: QuotaAdmissionDep
) -> UsageReport:
    """A user's plan, quota period, usage and rate-limit state (admin)."""
    user = await session.get(User, user_id)
    if user is None:
        raise NoSuchUser()
    return await usage_report(admission, session, user, clock.now())


@router.get("/me/api-keys/{key_id}/limits", response_model=KeyLimitsOut)
async def get_my_key_limits(
    key_id: uuid.UUID, user: TokenUser, session: SessionDep
) -> KeyLimitsOut:
    """The rate limits set on one of your API keys (nulls: it shares your plan's limits)."""
    return await key_limits(session, await _key(session, key_id, user))


@router.put("/me/api-keys/{key_id}/limits", response_model=KeyLimitsOut)
async def put_my_key_limits(
    key_id: uuid.UUID, limits: KeyLimitsIn, user: TokenUser, session: SessionDep
) -> KeyLimitsOut:
    """Limit one of your API keys (requests and tokens per minute) below your plan's limits."""
    return await set_key_limits(session, await _key(session, key_id, user), limits)


@router.put("/admin/api-keys/{key_id}/limits", response_model=KeyLimitsOut, tags=["admin"])
async def put_key_limits(
    key_id: uuid.UUID, limits: KeyLimitsIn, _: AdminUser, session: SessionDep
) -> KeyLimitsOut:
    """Set or remove any API key's own rate limits (admin)."""
    return await set_key_limits(session, await _key(session, key_id, None), limits)
