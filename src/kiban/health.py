"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from kiban import __version__
from kiban.auth.dependencies import KeyRingDep
from kiban.core.migrations import migration_status

log = structlog.get_logger("kiban.health")

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(keyring: KeyRingDep) -> dict[str, Any]:
    """The process is alive. Reports the version and a fingerprint of the JWT verification keys.

    Instances that accept the same tokens show the same fingerprint.
    """
    return {
        "status": "ok",
        "version": __version__,
        "jwt": {"key_fingerprint": keyring.fingerprint, "current_kid": keyring.current.kid},
    }


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> dict[str, Any] | JSONResponse:
    """The database is reachable and its schema is at the migrations' head."""
    engine = request.app.state.engine
    checks: dict[str, Any] = {}
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            status = await conn.run_sync(migration_status)
        checks["database"] = "ok"
        checks["migrations"] = status.as_dict()
        ready = status.at_head
    except Exception as e:  # any failure means "not ready", with the reason
        # The full error goes to the log; an unauthenticated probe only learns its kind.
        log.warning("readiness_failed", error=f"{type(e).__name__}: {e}")
        checks["database"] = f"error: {type(e).__name__}"
        ready = False
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    if not ready:
        return JSONResponse(body, status_code=503)
    return body
