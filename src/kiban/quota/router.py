"""Usage visibility: ``GET /me/usage`` and ``GET /admin/users/{id}/usage``."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.auth.dependencies import AdminUser, CurrentUser, TokenUser
from kiban.core import clock
from kiban.core.db import SessionDep
from kiban.core.errors import NotFound, ServiceUnavailable
from kiban.models import ApiKey, User
from kiban.quota.admission import QuotaAdmission
from kiban.quota.schemas import KeyLimitsIn, KeyLimitsOut, UsageReport
from kiban.quota.service import key_limits, set_key_limits, usage_report

router = APIRouter(tags=["usage"])


class NoSuchUser(NotFound):
    code = "no_such_user"
    default_message = "No user with this id."


def get_quota_admission(request: Request) -> QuotaAdmission:
    admission = getattr(request.app.state, "admission", None)
    if not isinstance(admission, QuotaAdmission):
        raise ServiceUnavailable("Quota enforcement is not running in this process.")
    return admission


QuotaAdmissionDep = Annotated[QuotaAdmission, Depends(get_quota_admission)]


class NoSuchKey(NotFound):
    code = "no_such_api_key"
    default_message = "No API key with this id."


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
