"""``kiban doctor`` check for the upstream deployments: each reachable, its key accepted, the
models routed to it listed by its model list (``GET {base_url}/models`` for an OpenAI-compatible
deployment; Anthropic's ``GET {base_url}/v1/models`` with ``x-api-key`` and
``anthropic-version``)."""

from __future__ import annotations

import aiohttp

from kiban.core.doctor import DoctorContext, Finding, doctor_check
from kiban.gateway.deployments import Deployment
from kiban.gateway.providers.anthropic import ANTHROPIC_VERSION
from kiban.gateway.service import GatewayConfig
from kiban.settings import ConfigurationError

_PROBE_SECONDS = 10.0


@doctor_check
async def check_deployments(ctx: DoctorContext) -> list[Finding]:
    """Upstream deployments."""
    try:
        catalog = GatewayConfig.load(ctx.settings).catalog
    except ConfigurationError as e:
        return [Finding("fail", "the models file is misconfigured", str(e), "see docs/gateway.md")]
    if not catalog.deployments:
        return [
            Finding(
                "ok",
                "no upstream deployment: only the built-in extractive engine answers",
                "",
                "set OPENAI_API_KEY / OPENAI_BASE_URL, or declare [deployments] in the models file",
            )
        ]
    findings = []
    async with aiohttp.ClientSession() as session:
        for deployment in catalog.deployments.values():
            routed = sorted(
                {
                    deployment.model_id(m.upstream_model)
                    for m in catalog.models.values()
                    if deployment.name in m.deployments
                }
            )
            findings.append(await _probe(session, deployment, routed))
    return findings


async def _probe(
    session: aiohttp.ClientSession, deployment: Deployment, routed: list[str]
) -> Finding:
    name = f"deployment {deployment.name!r} ({deployment.kind}, {deployment.base_url})"
    headers = {"Accept": "application/json"}
    if deployment.kind == "anthropic":
        key_hint = deployment.api_key_env or "ANTHROPIC_API_KEY"
        url = f"{deployment.base_url}/v1/models"
        headers["anthropic-version"] = ANTHROPIC_VERSION
        if deployment.api_key:
            headers["x-api-key"] = deployment.api_key
    else:
        key_hint = deployment.api_key_env or "OPENAI_API_KEY"
        url = f"{deployment.base_url}/models"
        if deployment.api_key:
            headers["Authorization"] = f"Bearer {deployment.api_key}"
    timeout = aiohttp.ClientTimeout(
        total=_PROBE_SECONDS, sock_connect=deployment.connect_timeout_seconds
    )
    try:
        async with session.get(url, headers=headers, timeout=timeout) as response:
            status = response.status
            body = await response.json(content_type=None) if status < 400 else None
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        return Finding(
            "fail",
            f"{name}: unreachable",
            f"{type(e).__name__}: {e}",
            "check its base_url (or OPENAI_BASE_URL / ANTHROPIC_BASE_URL) and that the server "
            "is running",
        )
    if status in (401, 403):
        return Finding(
            "fail", f"{name}: the key was refused (HTTP {status})", "", f"check {key_hint}"
        )
    if status >= 400:
        return Finding(
            "warn",
            f"{name}: reachable, but GET /models answered HTTP {status}",
            "some OpenAI-compatible servers have no model list; chat may still work",
        )
    listed = {str(m.get("id")) for m in (body or {}).get("data") or [] if isinstance(m, dict)}
    missing = [m for m in routed if m not in listed]
    if missing:
        return Finding(
            "warn",
            f"{name}: reachable, key accepted, but it does not list {', '.join(missing)}",
            f"it lists {len(listed)} models",
            "check the models' upstream_model, or the deployments they route to",
        )
    return Finding(
        "ok",
        f"{name}: reachable, key accepted, {len(listed)} models listed",
        f"routed here: {', '.join(routed) or 'no model'}",
    )
