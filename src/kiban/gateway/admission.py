"""Admission: the gateway's one seam for plans, rate limits and quotas.

CONTRACT between the gateway pipeline (issue 3) and quota enforcement (issue 5):

- Before any provider call the pipeline calls ``await admission.admit(AdmissionRequest(...))``.
  It returns a ``Ticket`` (plan, the tokens reserved, the completion cap to send upstream, and the
  rate-limit/quota headers to put on the response) or raises an ``AppError`` (429 ``quota_exceeded``
  / ``rate_limited``, 403 ``model_not_in_plan`` ...). On a raise the pipeline writes one ledger
  record with status ``rejected`` and the error's code, sends nothing upstream, and re-raises.
- After the call, in the same finalization path that writes the ledger record (ok, no_context,
  error or cancelled alike, shielded from cancellation), the pipeline calls
  ``await admission.settle(ticket, Usage(...))`` exactly once.

``OpenAdmission`` admits everything (benchmarks' baseline); the app hands the quota-enforcing
implementation to ``Gateway.create``, which requires one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from kiban.auth import Principal


@dataclass(frozen=True)
class AdmissionRequest:
    principal: Principal
    endpoint: str  # "ai_test" | "ai_stream" | "chat_completions"
    model: str  # the resolved model name (as listed by /v1/models)
    prompt_tokens: int  # counted with the gateway's tokenizer
    max_completion_tokens: int | None  # what the request asked for, if anything


@dataclass
class Ticket:
    plan: str | None = None
    reserved_tokens: int = 0
    # The completion cap to send upstream (the request's, capped by the plan); None = no cap.
    max_completion_tokens: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    state: Any = None  # implementation-private (what settle needs)
    # True: ``settle`` writes the call's ledger record in the settlement's own transaction, so
    # that a finished call's usage and its record are one durable write. False: the gateway
    # hands the record to its buffered writer.
    records_usage: bool = False


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal | None


class Admission(Protocol):
    async def admit(self, request: AdmissionRequest) -> Ticket: ...

    async def settle(
        self, ticket: Ticket, usage: Usage, record: dict[str, Any] | None = None
    ) -> None: ...


class OpenAdmission:
    """Admits every request; enforces nothing (used where no plans are configured)."""

    async def admit(self, request: AdmissionRequest) -> Ticket:
        return Ticket(max_completion_tokens=request.max_completion_tokens)

    async def settle(
        self, ticket: Ticket, usage: Usage, record: dict[str, Any] | None = None
    ) -> None:
        return None
