"""The user's own ``/account`` page: plan and billing, quota bar, recent requests and API keys."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from kiban.admin.dashboard import account_context
from kiban.admin.exceptions import CsrfFailed
from kiban.admin.pages import render
from kiban.admin.web_auth import Viewer, check_csrf, current_viewer, finish, sign_in_redirect
from kiban.auth import KeyRing, KeyRingDep, create_api_key, list_api_keys, revoke_api_key
from kiban.billing import (
    BillingNotConfigured,
    NoBillingAccount,
    StripeClient,
    StripeUnavailable,
    open_portal,
    require_stripe,
)
from kiban.core.db import SessionDep
from kiban.core.dependencies import SettingsDep
from kiban.settings import Settings

router = APIRouter(include_in_schema=False)


async def _page(
    request: Request,
    session: SessionDep,
    settings: Settings,
    viewer: Viewer,
    *,
    new_key: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    context = await account_context(request, session, settings, viewer.user)
    context.update(
        {
            "subject": viewer.user,
            "keys": await list_api_keys(session, viewer.user),
            "new_key": new_key,
            "error": error,
        }
    )
    return render(
        request, "account.html", context, settings=settings, viewer=viewer, status_code=status_code
    )


async def _form_viewer(
    request: Request, session: SessionDep, settings: Settings, keyring: KeyRing, csrf_token: str
) -> Viewer | Response:
    """The signed-in viewer of a form post, or the response instead: sign in, or 403 on CSRF."""
    viewer = await current_viewer(request, session, settings, keyring)
    if viewer is None:
        return sign_in_redirect(request)
    try:
        check_csrf(request, csrf_token)
    except CsrfFailed as e:
        return await _page(request, session, settings, viewer, error=e.message, status_code=403)
    return viewer


@router.get("/account")
async def account(
    request: Request, session: SessionDep, settings: SettingsDep, keyring: KeyRingDep
) -> Response:
    """The signed-in user's plan and billing, quota, recent requests and API keys."""
    viewer = await current_viewer(request, session, settings, keyring)
    if viewer is None:
        return sign_in_redirect(request)
    return await _page(request, session, settings, viewer)


@router.post("/account/api-keys")
async def create_key(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    keyring: KeyRingDep,
    name: Annotated[str, Form(min_length=1, max_length=100)],
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """Create an API key; its secret is shown once on the page that follows."""
    viewer = await _form_viewer(request, session, settings, keyring, csrf_token)
    if isinstance(viewer, Response):
        return viewer
    created = await create_api_key(session, viewer.user, name.strip() or "key")
    return await _page(request, session, settings, viewer, new_key=created.plaintext)


@router.post("/account/api-keys/{key_id}/revoke")
async def revoke_key(
    request: Request,
    key_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    keyring: KeyRingDep,
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """Revoke one of the user's API keys."""
    viewer = await _form_viewer(request, session, settings, keyring, csrf_token)
    if isinstance(viewer, Response):
        return viewer
    await revoke_api_key(session, viewer.user, key_id)
    return finish(RedirectResponse("/account", status_code=303), request, settings, viewer)


@router.post("/account/billing-portal")
async def billing_portal(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    keyring: KeyRingDep,
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """Open the Stripe Customer Portal for the user's customer (a redirect to Stripe)."""
    viewer = await _form_viewer(request, session, settings, keyring, csrf_token)
    if isinstance(viewer, Response):
        return viewer
    try:
        stripe: StripeClient | None = getattr(request.app.state, "stripe", None)
        url = await open_portal(session, require_stripe(stripe), settings, viewer.user)
    except (BillingNotConfigured, NoBillingAccount) as e:
        return await _page(
            request, session, settings, viewer, error=e.message, status_code=e.status_code
        )
    except StripeUnavailable as e:
        message = f"{e.message} Please try again in a moment."
        return await _page(request, session, settings, viewer, error=message, status_code=502)
    return finish(RedirectResponse(url, status_code=303), request, settings, viewer)
