"""One AI request from admission to its ledger record: the ``Call``.

Every request that reaches a gateway route gets a ``Call`` as soon as it is authenticated. Its
``finish`` runs exactly once, whatever happens (an answer, nothing relevant, an upstream failure,
a rejection, a client that went away, a cancelled task): it writes the one ledger record (with the
admission's settlement, in one transaction; or, for a call refused before admission, through the
ledger writer, handed over synchronously before any ``await`` so a cancellation cannot lose it),
updates the metrics and the access-log fields, and waits, shielded, for the settlement or the
record's commit: the response is sent after its record is durable.

What finishing needs of the gateway (prices, the ledger, the content policy, a home for the
settlement task) is handed to the call as a ``Recorder``, so a call knows nothing else of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import structlog

from kiban.auth import Principal
from kiban.core import clock
from kiban.core.errors import AppError
from kiban.core.metrics import (
    AI_COST,
    AI_REQUESTS,
    AI_TOKENS,
    AI_TTFT,
    DEPLOYMENT_REQUESTS,
    child,
)
from kiban.gateway.admission import Admission, AdmissionRequest, Ticket, Usage
from kiban.gateway.catalog import ModelSpec
from kiban.gateway.pricing import PriceTable
from kiban.gateway.providers.base import Route, TokenUsage
from kiban.models import UsageStatus

log = structlog.get_logger("kiban.gateway")


class LedgerSink(Protocol):
    def submit(self, record: dict[str, Any]) -> asyncio.Future[None]:
        """Take the record synchronously; the future is done once it is committed."""
        ...


# How long a response waits for its ledger record's commit when the database is slow or down;
# past it the response goes out and the record stays queued (a crash then loses it: logged).
COMMIT_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Recorder:
    """What a call's finish needs, and no more (the gateway makes one, ``Gateway.recorder``)."""

    prices: PriceTable
    ledger: LedgerSink  # takes the record synchronously (never blocks, never raises)
    content_policy: Callable[[str | None], str | None]  # what the ledger keeps of a text
    track: Callable[[asyncio.Future[Any]], None]  # keeps a settlement alive until shutdown


@dataclass(frozen=True)
class Outcome:
    """What ``finish`` recorded (the response reports the same numbers)."""

    status: str
    usage: TokenUsage
    cost: Decimal | None
    response_time_ms: float
    ttft_ms: float | None
    model: str

    def usage_json(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "total_tokens": self.usage.total_tokens,
        }

    @property
    def cost_text(self) -> str | None:
        return None if self.cost is None else format(self.cost.normalize(), "f")


@dataclass
class Call:
    recorder: Recorder
    admission: Admission
    principal: Principal
    request_id: str
    endpoint: str  # "ai_test" | "ai_stream" | "chat_completions" | "messages" | "embeddings"
    log_fields: dict[str, Any]
    streamed: bool = False
    model: ModelSpec | None = None
    model_name: str = ""  # what the request asked for, while it is not resolved
    prompt_text: str | None = None
    ticket: Ticket | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    created_at: datetime = field(default_factory=clock.now)
    first_token_at: float | None = None
    handed_off: bool = False  # a streaming response owns the finish now
    outcome: Outcome | None = None
    route: Route | None = None  # where an upstream model's request went (the router fills it)

    # --- steps -------------------------------------------------------------------------------

    async def admit(self, prompt_tokens: int, max_completion_tokens: int | None) -> Ticket:
        """Ask the admission (plans, rate limits, quotas); a refusal is recorded as ``rejected``."""
        assert self.model is not None
        self.ticket = await self.admission.admit(
            AdmissionRequest(
                principal=self.principal,
                endpoint=self.endpoint,
                model=self.model.name,
                prompt_tokens=prompt_tokens,
                max_completion_tokens=max_completion_tokens,
            )
        )
        return self.ticket

    @property
    def limit_headers(self) -> dict[str, str]:
        """The admission's rate-limit and quota headers: on every response of an admitted call."""
        return self.ticket.headers if self.ticket is not None else {}

    def first_token(self) -> None:
        """Note the time to the first streamed token (once)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[Call]:
        """Finish the call with the right status if the block fails or is cancelled."""
        try:
            yield self
        except AppError as exc:
            status = UsageStatus.ERROR if self.ticket is not None else UsageStatus.REJECTED
            # An admitted request's error response carries the limit headers too.
            exc.headers = {**self.limit_headers, **exc.headers}
            await self.finish(status, error_code=exc.error_code)
            raise
        except asyncio.CancelledError:
            await self.finish(UsageStatus.CANCELLED, error_code="client_disconnected")
            raise
        except Exception:
            await self.finish(UsageStatus.ERROR, error_code="internal_error")
            raise
        if not self.handed_off and self.outcome is None:
            await self.finish(UsageStatus.ERROR, error_code="internal_error")

    # --- the one finish ------------------------------------------------------------------------

    async def finish(
        self,
        status: str,
        *,
        usage: TokenUsage | None = None,
        response_text: str | None = None,
        error_code: str | None = None,
        served: ModelSpec | None = None,
    ) -> Outcome:
        """Record the call (once): metrics and log fields, then settle the ticket together with
        the call's ledger record (or hand the record to the ledger writer when there is none)."""
        if self.outcome is not None:
            return self.outcome
        usage = usage or TokenUsage()
        model = served or self.model
        name = model.name if model else (self.model_name or "unknown")
        cost: Decimal | None = None
        if model is not None and status not in (UsageStatus.REJECTED,):
            names: tuple[str, ...] = (model.name, model.upstream_model)
            if self.route is not None and self.route.model_id not in (None, model.upstream_model):
                # A deployment that serves the model as another one (model_ids): that one's price
                # when the table has it.
                names = (str(self.route.model_id), *names)
            cost = self.recorder.prices.cost(
                names,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens,
                usage.cache_write_tokens,
            )
        elif status == UsageStatus.REJECTED:
            cost = Decimal(0)
        now = time.perf_counter()
        ttft_ms = None
        if self.first_token_at is not None:
            ttft_ms = round((self.first_token_at - self.started) * 1000, 3)
        outcome = Outcome(
            status=str(status),
            usage=usage,
            cost=cost,
            response_time_ms=round((now - self.started) * 1000, 3),
            ttft_ms=ttft_ms,
            model=name,
        )
        self.outcome = outcome
        record = self._record(outcome, model, error_code, response_text)
        # An admitted call's record is written with its settlement, one durable write before the
        # response (decision 0065); the others' (refused before admission) by the buffered writer.
        with_settle = self.ticket is not None and self.ticket.records_usage
        committed = None if with_settle else self.recorder.ledger.submit(record)
        # A metric label only for a model the catalog knows: the name a request asked for is the
        # client's to choose, and each new label value is a time series kept for good.
        self._observe(outcome, name if model is not None else "unknown")
        if self.ticket is not None:
            settle = asyncio.ensure_future(
                self.admission.settle(
                    self.ticket,
                    Usage(usage.prompt_tokens, usage.completion_tokens, cost),
                    record if with_settle else None,
                )
            )
            self.recorder.track(settle)
            try:
                await asyncio.shield(settle)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("settle_failed", request_id=self.request_id)
        if committed is not None:
            # The writer commits in groups: the response (a refusal, mostly) waits for its own.
            try:
                await asyncio.wait_for(asyncio.shield(committed), COMMIT_WAIT_SECONDS)
            except TimeoutError:
                log.warning("ledger_commit_slow", request_id=self.request_id)
        return outcome

    def _record(
        self, outcome: Outcome, model: ModelSpec | None, error_code: str | None, text: str | None
    ) -> dict[str, Any]:
        policy = self.recorder.content_policy
        route = self.route
        return {
            "request_id": self.request_id,
            "created_at": self.created_at,
            "user_id": self.principal.user.id,
            "api_key_id": self.principal.api_key_id,
            "plan": self.ticket.plan if self.ticket else None,
            "endpoint": self.endpoint,
            "model": outcome.model[:128],
            "provider": (route.kind if route and route.kind else None)
            or (model.provider if model else "none"),
            "streamed": self.streamed,
            "status": outcome.status,
            "error_code": error_code,
            "prompt_tokens": outcome.usage.prompt_tokens,
            "completion_tokens": outcome.usage.completion_tokens,
            "total_tokens": outcome.usage.total_tokens,
            "cached_tokens": outcome.usage.cached_tokens,
            "deployment": route.deployment if route else None,
            "attempts": route.attempts if route else 0,
            "cache_write_tokens": outcome.usage.cache_write_tokens,
            "estimated_cost": outcome.cost,
            "response_time_ms": outcome.response_time_ms,
            "time_to_first_token_ms": outcome.ttft_ms,
            "source_ids": [
                {"document_id": s["document_id"], "chunk_id": s["chunk_id"]} for s in self.sources
            ]
            or None,
            "prompt_text": policy(self.prompt_text),
            "response_text": policy(text),
        }

    def _observe(self, outcome: Outcome, label: str) -> None:
        child(AI_REQUESTS, label, self.endpoint, outcome.status).inc()
        if self.route is not None and self.route.deployment is not None:
            child(DEPLOYMENT_REQUESTS, self.route.deployment, outcome.status).inc()
            self.log_fields.update(deployment=self.route.deployment, attempts=self.route.attempts)
        if outcome.usage.prompt_tokens:
            child(AI_TOKENS, label, "prompt").inc(outcome.usage.prompt_tokens)
        if outcome.usage.completion_tokens:
            child(AI_TOKENS, label, "completion").inc(outcome.usage.completion_tokens)
        if outcome.cost:
            child(AI_COST, label).inc(float(outcome.cost))
        if outcome.ttft_ms is not None:
            child(AI_TTFT, label).observe(outcome.ttft_ms / 1000)
        self.log_fields.update(
            model=outcome.model,
            ai_status=outcome.status,
            prompt_tokens=outcome.usage.prompt_tokens,
            completion_tokens=outcome.usage.completion_tokens,
            cost=outcome.cost_text,
        )
