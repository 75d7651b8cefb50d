"""Server-side pages: the Jinja2 environment, its filters, one ``render``, the admin guard."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.admin.web_auth import (
    CSRF_FIELD,
    Viewer,
    csrf_token,
    current_viewer,
    finish,
    issue_csrf_cookie,
    sign_in_redirect,
)
from kiban.auth import KeyRing
from kiban.settings import Settings

PACKAGE_DIR = Path(__file__).parent
STATIC_DIR = PACKAGE_DIR / "static"
templates = Jinja2Templates(directory=PACKAGE_DIR / "templates")

# The ledger's endpoint names (each surface's ``endpoint`` in kiban.gateway.surfaces) and the
# paths a client calls, which the dashboard shows instead. The analytics API and the CSV export
# keep the names.
ENDPOINT_PATHS = {
    "ai_test": "/ai/test",
    "ai_stream": "/ai/stream",
    "chat_completions": "/v1/chat/completions",
    "embeddings": "/v1/embeddings",
    "messages": "/v1/messages",
}
ENDPOINT_NAMES = {path: name for name, path in ENDPOINT_PATHS.items()}


def endpoint_path(name: str | None) -> str:
    """The path of a ledger endpoint name (an unknown name is shown as it is)."""
    return "–" if not name else ENDPOINT_PATHS.get(name, name)


def endpoint_name(value: str) -> str:
    """The ledger's name for an endpoint given by its path or by its name."""
    return ENDPOINT_NAMES.get(value, value)


def fmt_int(value: int | None) -> str:
    """1234567 -> '1,234,567'."""
    return "–" if value is None else f"{value:,}"


def fmt_usd(value: Decimal | float | None) -> str:
    """Dollars with cents, or four decimals below ten dollars (AI requests cost fractions)."""
    if value is None:
        return "–"
    return f"${value:,.2f}" if abs(float(value)) >= 10 else f"${value:,.4f}"


def fmt_ms(value: float | None) -> str:
    """Milliseconds, whole above ten."""
    if value is None:
        return "–"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def fmt_pct(value: float | None) -> str:
    """A share as a percentage with one decimal."""
    return "–" if value is None else f"{value * 100:.1f}%"


def fmt_time(value: datetime | None) -> str:
    """A UTC time, to the second."""
    return "–" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def fmt_sources(sources: list[Any] | None) -> str:
    """Retrieved sources as short ids: ``document#chunk`` (ids cut to 8 characters)."""
    if not sources:
        return "–"
    out = []
    for s in sources:
        if isinstance(s, dict):
            doc, chunk = str(s.get("document_id", "?"))[:8], str(s.get("chunk_id", "?"))[:8]
            out.append(f"{doc}#{chunk}")
        else:
            out.append(str(s)[:17])
    return ", ".join(out)


templates.env.filters.update(
    {
        "int": fmt_int,
        "usd": fmt_usd,
        "ms": fmt_ms,
        "pct": fmt_pct,
        "time": fmt_time,
        "sources": fmt_sources,
        "endpoint_path": endpoint_path,
    }
)


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    settings: Settings,
    viewer: Viewer | None,
    status_code: int = 200,
) -> Response:
    """A page response: the template, the viewer and CSRF field, renewed session cookies."""
    context = {
        "viewer": viewer.user if viewer else None,
        "csrf_field": CSRF_FIELD,
        "csrf_token": csrf_token(request),
        **context,
    }
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    issue_csrf_cookie(response, request)
    return finish(response, request, settings, viewer)


async def admin_or_response(
    request: Request, session: AsyncSession, settings: Settings, keyring: KeyRing
) -> tuple[Viewer | None, Response | None]:
    """The signed-in admin, or the response to send instead (sign-in redirect, or a 403 page)."""
    viewer = await current_viewer(request, session, settings, keyring)
    if viewer is None:
        return None, sign_in_redirect(request)
    if not viewer.user.is_admin:
        context = {"title": "Admins only", "message": "This page is for administrators."}
        page = render(
            request, "message.html", context, settings=settings, viewer=viewer, status_code=403
        )
        return viewer, page
    return viewer, None
