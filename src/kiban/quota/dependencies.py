"""The running ``QuotaAdmission`` as a dependency, for routes that read or change quota state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from kiban.core.errors import ServiceUnavailable
from kiban.quota.admission import QuotaAdmission


def get_quota_admission(request: Request) -> QuotaAdmission:
    admission = getattr(request.app.state, "admission", None)
    if not isinstance(admission, QuotaAdmission):
        raise ServiceUnavailable("Quota enforcement is not running in this process.")
    return admission


QuotaAdmissionDep = Annotated[QuotaAdmission, Depends(get_quota_admission)]
