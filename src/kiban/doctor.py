"""``kiban doctor``: the core's checks and those each domain registers in its ``doctor``."""

from __future__ import annotations

from kiban.auth import doctor as _auth_checks  # noqa: F401  (registers its checks)
from kiban.billing import doctor as _billing_checks  # noqa: F401
from kiban.core.doctor import Finding, run_checks
from kiban.gateway import doctor as _gateway_checks  # noqa: F401
from kiban.knowledge import doctor as _knowledge_checks  # noqa: F401
from kiban.quota import doctor as _quota_checks  # noqa: F401
from kiban.settings import Settings


async def run_doctor(settings: Settings) -> list[tuple[str, list[Finding]]]:
    """Every registered check's name and findings, in registration order."""
    return await run_checks(settings)
