"""``GET /metrics``: the Prometheus exposition of ``kiban.core.metrics.REGISTRY``.

Reachable from the networks in ``KIBAN_METRICS_ALLOWED_NETWORKS`` (default: this machine only) or
with ``Authorization: Bearer <KIBAN_METRICS_TOKEN>``. The client address is the connection's peer
(behind a proxy, uvicorn's ``FORWARDED_ALLOW_IPS`` decides whether X-Forwarded-For counts).
"""

from __future__ import annotations

import ipaddress
import secrets
from functools import lru_cache

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kiban.admin.exceptions import MetricsForbidden
from kiban.core.dependencies import SettingsDep
from kiban.core.metrics import REGISTRY

router = APIRouter(tags=["ops"])

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def _networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _allowed_address(host: str | None, networks: tuple[Network, ...]) -> bool:
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _valid_token(request: Request, expected: str | None) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not expected or scheme.lower() != "bearer" or not token:
        return False
    return secrets.compare_digest(token.strip().encode(), expected.encode())


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, settings: SettingsDep) -> Response:
    """Prometheus metrics (allowed networks or the metrics token only)."""
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    host = request.client.host if request.client else None
    networks = _networks(tuple(settings.metrics_allowed_networks))
    if not (_allowed_address(host, networks) or _valid_token(request, token)):
        raise MetricsForbidden()
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
