"""Plans' admission: quotas and rate limits reserved before an AI call and settled after it.

``QuotaAdmission`` implements the gateway's ``Admission`` protocol (``kiban.gateway.admission``);
the app starts it with ``running_admission`` and hands it to the gateway, which never imports
this package. ``router`` serves ``/me/usage`` and API key limits; ``store`` holds the backends.
"""

from kiban.quota.admission import CostBound, QuotaAdmission
from kiban.quota.dependencies import QuotaAdmissionDep
from kiban.quota.exceptions import (
    ModelNotInPlan,
    PromptTooLarge,
    QuotaExceeded,
    QuotaUnavailable,
    RateLimited,
    UnknownPlan,
)
from kiban.quota.limits import LIMIT_HEADERS
from kiban.quota.runtime import build_store, cost_bound_from, running_admission
from kiban.quota.schemas import UsageReport
from kiban.quota.service import grant_extra_tokens, set_plan, usage_report

__all__ = [
    "LIMIT_HEADERS",
    "CostBound",
    "ModelNotInPlan",
    "PromptTooLarge",
    "QuotaAdmission",
    "QuotaAdmissionDep",
    "QuotaExceeded",
    "QuotaUnavailable",
    "RateLimited",
    "UnknownPlan",
    "UsageReport",
    "build_store",
    "cost_bound_from",
    "grant_extra_tokens",
    "running_admission",
    "set_plan",
    "usage_report",
]
