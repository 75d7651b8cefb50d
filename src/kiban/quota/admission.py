"""``QuotaAdmission``: the gateway's Admission that enforces plans, quotas and rate limits.

On ``admit``: resolve the user's entitlement (plan + quota period), check the model and the prompt
against the plan, cap the completion, then reserve ``prompt + completion cap`` tokens (and their
cost upper bound) with ONE atomic store operation that also takes the request from the user's
per-minute rate window. On ``settle``: the actual usage replaces the reservation (exactly once
per ticket; a failed settle is retried in the background, and the store makes a retry count
once). Rate-limit and quota headers ride on ``Ticket.headers``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kiban.billing import Entitlement, PlanCatalog, resolve_entitlement, unsubscribed_entitlement
from kiban.core import clock, ids
from kiban.core.metrics import QUOTA_REJECTIONS, QUOTA_SETTLE_RETRIES
from kiban.gateway import AdmissionRequest, Ticket, Usage
from kiban.models import User
from kiban.quota.exceptions import (
    ModelNotInPlan,
    PromptTooLarge,
    QuotaExceeded,
    QuotaUnavailable,
    RateLimited,
    error_fields,
    with_retry_after,
)
from kiban.quota.limits import limit_headers, seconds_until, token_limit, window_reset
from kiban.quota.store.base import (
    KeyWindow,
    QuotaState,
    QuotaStore,
    Reservation,
    ReserveOutcome,
    SettleResult,
    nanos_to_usd,
    usd_to_nanos,
    window_of,
)

log = structlog.get_logger("kiban.quota")

# A request's cost upper bound: (model, prompt tokens, completion tokens) -> USD or None.
CostBound = Callable[[str, int, int], Decimal | None]
# Below this many completion tokens a shrunken reservation is not worth sending upstream.
MIN_COMPLETION_TOKENS = 16


@dataclass
class _Held:
    reservation: Reservation
    handle: object
    settled: bool = False
    record: dict[str, Any] | None = None  # the call's ledger record, written with the settle


class QuotaAdmission:
    """Enforces the plan catalog through a ``QuotaStore`` (see the module docstring)."""

    def __init__(
        self,
        store: QuotaStore,
        catalog: PlanCatalog,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        grace: timedelta = timedelta(days=7),  # KIBAN_BILLING_PAST_DUE_GRACE_DAYS' default
        reservation_ttl: timedelta = timedelta(seconds=900),
        cost_bound: CostBound | None = None,
        settle_retry: timedelta = timedelta(minutes=15),
        settle_wait: timedelta = timedelta(seconds=2),
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.grace = grace
        self._sessionmaker = sessionmaker
        self._ttl = reservation_ttl
        self.cost_bound = cost_bound
        self.settle_retry = settle_retry
        # How long a response waits for a failed settlement's retries (its record rides with
        # it): a blip of the store still ends with the record committed before the response.
        self.settle_wait = settle_wait
        self.settle_backoff = 0.2  # seconds before the first retry; doubles up to 10 s
        self._retries: set[asyncio.Task[None]] = set()

    async def entitlement(
        self, user: User, now: datetime, *, may_be_subscribed: bool | None = None
    ) -> Entitlement:
        """The user's plan and period (the session connects only if billing needs to query)."""
        if may_be_subscribed is False:  # not even a session object: this is most requests
            return unsubscribed_entitlement(user, now, catalog=self.catalog)
        async with self._sessionmaker() as session:
            return await resolve_entitlement(
                session,
                user,
                now,
                catalog=self.catalog,
                grace=self.grace,
                may_be_subscribed=may_be_subscribed,
            )

    async def admit(self, request: AdmissionRequest) -> Ticket:
        """Check the plan, take the rate window and reserve the upper bound, or raise."""
        user = request.principal.user
        now = clock.now()
        try:
            entitlement = await self.entitlement(
                user, now, may_be_subscribed=request.principal.may_be_subscribed
            )
        except (SQLAlchemyError, OSError) as e:
            log.error("quota_store_unavailable", error=str(e))
            raise QuotaUnavailable(headers={"Retry-After": "5"}) from e
        plan = entitlement.plan
        if not plan.allows_model(request.model):
            QUOTA_REJECTIONS.labels(reason="model_not_in_plan").inc()
            raise ModelNotInPlan(
                f"The {plan.label} plan does not include the model {request.model!r}.",
                hint="Use one of the plan's models, or upgrade your plan.",
                extra={"model": request.model, "plan": plan.name, "allowed_models": plan.models},
            )
        if request.prompt_tokens > plan.max_prompt_tokens:
            QUOTA_REJECTIONS.labels(reason="prompt_too_large").inc()
            raise PromptTooLarge(
                f"The prompt has {request.prompt_tokens} tokens; the {plan.label} plan allows "
                f"{plan.max_prompt_tokens}.",
                extra={"limit": plan.max_prompt_tokens, "prompt_tokens": request.prompt_tokens},
            )
        asked = request.max_completion_tokens
        cap = min(asked, plan.max_tokens) if asked is not None else plan.max_tokens
        key_window = await self._take_key_window(request, request.prompt_tokens + cap, now)
        reservation = self._reservation(request, user, entitlement, cap, now)
        outcome = await self._reserve(reservation)
        if outcome.refused == "quota" and asked is None:
            # Near the end of the allowance: give the request what is left, not a refusal.
            left = token_limit(plan, outcome.state) - outcome.state.used_tokens
            left -= outcome.state.reserved_tokens + request.prompt_tokens
            if left >= MIN_COMPLETION_TOKENS:
                cap = min(left, cap)
                reservation = self._reservation(request, user, entitlement, cap, now)
                outcome = await self._reserve(reservation)
        if outcome.refused is not None:
            self._refuse(outcome.refused, reservation, entitlement, outcome.state, now)
        headers = limit_headers(plan, entitlement, outcome.state, now)
        if key_window is not None and key_window.requests_per_minute is not None:
            left = key_window.requests_per_minute - key_window.window_requests
            headers["X-RateLimit-Key-Limit"] = str(key_window.requests_per_minute)
            headers["X-RateLimit-Key-Remaining"] = str(max(left, 0))
        return Ticket(
            plan=plan.name,
            reserved_tokens=reservation.tokens,
            max_completion_tokens=cap,
            headers=headers,
            state=_Held(reservation, outcome.handle),
            records_usage=True,
        )

    async def _take_key_window(
        self, request: AdmissionRequest, tokens: int, now: datetime
    ) -> KeyWindow | None:
        """The API key's own limits, when the request came with a key that has some."""
        key_id = request.principal.api_key_id
        # key_has_limits is False when the key had no limits row at authentication (read with
        # the key, or cached: a limit set anywhere reaches every process within the API-key
        # cache's 1 s bound).
        if key_id is None or request.principal.key_has_limits is False:
            return None
        try:
            window = await self.store.take_key_window(key_id, tokens, window_of(now.timestamp()))
        except (SQLAlchemyError, RedisError, OSError) as e:
            log.error("quota_store_unavailable", error=str(e))
            raise QuotaUnavailable(headers={"Retry-After": "5"}) from e
        if window is None or window.refused is None:
            return window
        QUOTA_REJECTIONS.labels(reason=f"key_{window.refused}").inc()
        retry = window_reset(now)
        if window.refused == "rate_requests":
            limit_type, limit = "api_key_requests_per_minute", window.requests_per_minute
        else:
            limit_type, limit = "api_key_tokens_per_minute", window.tokens_per_minute
        raise RateLimited(
            f"This API key is limited to {limit} {limit_type.split('_', 2)[2].replace('_', ' ')}.",
            hint=f"Retry in {retry} s, or ask for a higher limit on the key.",
            headers={"Retry-After": str(retry)},
            extra={"limit_type": limit_type, "limit": limit, "retry_after": retry},
        )

    async def _reserve(self, reservation: Reservation) -> ReserveOutcome:
        try:
            return await self.store.reserve(reservation)
        except (SQLAlchemyError, RedisError, OSError) as e:
            # Fail closed: a request we cannot meter is not sent upstream.
            log.error("quota_store_unavailable", error=str(e))
            QUOTA_REJECTIONS.labels(reason="unavailable").inc()
            raise QuotaUnavailable(headers={"Retry-After": "5"}) from e

    def _reservation(
        self,
        request: AdmissionRequest,
        user: User,
        entitlement: Entitlement,
        cap: int,
        now: datetime,
    ) -> Reservation:
        plan = entitlement.plan
        cost = (
            self.cost_bound(request.model, request.prompt_tokens, cap) if self.cost_bound else None
        )
        return Reservation(
            id=ids.unique_uuid(),
            user_id=user.id,
            period_start=entitlement.period_start,
            period_end=entitlement.period_end,
            tokens=request.prompt_tokens + cap,
            cost_nanos=usd_to_nanos(cost),
            token_limit=plan.monthly_tokens,
            cost_limit_nanos=(
                None if plan.monthly_cost_usd is None else usd_to_nanos(plan.monthly_cost_usd)
            ),
            requests_per_minute=plan.requests_per_minute,
            tokens_per_minute=plan.tokens_per_minute,
            now=now,
            expires_at=now + self._ttl,
        )

    def _refuse(
        self,
        reason: str,
        reservation: Reservation,
        entitlement: Entitlement,
        state: QuotaState,
        now: datetime,
    ) -> None:
        plan = entitlement.plan
        headers = limit_headers(plan, entitlement, state, now)
        QUOTA_REJECTIONS.labels(reason=reason).inc()
        if reason in ("quota", "cost"):
            retry = seconds_until(entitlement.period_end, now)
            resets_at = entitlement.period_end.isoformat().replace("+00:00", "Z")
            if reason == "quota":
                fields = error_fields(
                    quota="tokens",
                    limit=token_limit(plan, state),
                    used=state.used_tokens,
                    reserved=state.reserved_tokens,
                    requested=reservation.tokens,
                    resets_at=resets_at,
                )
                left = token_limit(plan, state) - state.used_tokens - state.reserved_tokens
                message = (
                    f"This request needs up to {reservation.tokens} tokens; {max(left, 0)} of "
                    f"your {plan.label} plan's tokens are left until {resets_at}."
                )
            else:
                fields = error_fields(
                    quota="cost_usd",
                    limit=str(plan.monthly_cost_usd),
                    used=str(nanos_to_usd(state.used_cost_nanos)),
                    reserved=str(nanos_to_usd(state.reserved_cost_nanos)),
                    resets_at=resets_at,
                )
                message = f"Your {plan.label} plan's spending budget is used up until {resets_at}."
            raise QuotaExceeded(
                message,
                hint="Lower max_tokens, wait for the reset, or upgrade your plan.",
                headers=with_retry_after(retry, headers),
                extra=fields,
            )
        retry = window_reset(now)
        if reason == "rate_requests":
            fields = error_fields(limit_type="requests_per_minute", limit=plan.requests_per_minute)
            message = f"The {plan.label} plan allows {plan.requests_per_minute} requests a minute."
        else:
            fields = error_fields(limit_type="tokens_per_minute", limit=plan.tokens_per_minute)
            message = f"The {plan.label} plan allows {plan.tokens_per_minute} tokens a minute."
        raise RateLimited(
            message,
            hint=f"Retry in {retry} s.",
            headers=with_retry_after(retry, headers),
            extra={**fields, "retry_after": retry},
        )

    async def settle(
        self, ticket: Ticket, usage: Usage, record: dict[str, Any] | None = None
    ) -> None:
        """Replace the ticket's reservation by the actual usage (once; later calls do nothing).

        ``record``, the call's ledger record, is written in the settlement's transaction: one
        durable write, committed before the response, so no answered call is left unrecorded
        and quota ``used`` equals the ledger's tokens. If the store fails, the settlement (with
        its record) is retried in the background (the store settles a reservation id at most
        once, so a retry after a lost reply counts nothing twice) until ``settle_retry`` has
        passed, and the response waits up to ``settle_wait`` for it to land; ``aclose`` gives
        pending retries a last chance.
        """
        held = ticket.state
        if not isinstance(held, _Held) or held.settled:
            return
        held.settled = True
        held.record = record
        used = max(usage.prompt_tokens, 0) + max(usage.completion_tokens, 0)
        cost = usd_to_nanos(usage.cost) if usage.cost and usage.cost > 0 else 0
        try:
            result = await self._settle_once(held, used, cost)
        except Exception as exc:
            log.warning(
                "quota_settle_failed", reservation=str(held.reservation.id), error=repr(exc)
            )
            retry = asyncio.create_task(self._retry_settle(held, used, cost))
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(retry), self.settle_wait.total_seconds())
            if not retry.done():
                # Answered now; until a retry lands, the record is held only here (a crash
                # loses it; an abandoned retry logs it whole).
                log.warning(
                    "quota_settle_pending",
                    reservation=str(held.reservation.id),
                    request_id=(record or {}).get("request_id"),
                )
            return
        self._note(held, result)

    async def _settle_once(self, held: _Held, used: int, cost: int) -> SettleResult:
        result = await self.store.settle(
            held.reservation,
            held.handle,
            used_tokens=used,
            used_cost_nanos=cost,
            record=held.record,
        )
        return result  # the store counts the record in LEDGER_WRITTEN when it writes it

    async def _retry_settle(self, held: _Held, used: int, cost: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settle_retry.total_seconds()
        delay, attempts = self.settle_backoff, 1
        try:
            while loop.time() + delay < deadline:
                await asyncio.sleep(delay)
                attempts += 1
                try:
                    result = await self._settle_once(held, used, cost)
                except Exception as exc:
                    log.warning(
                        "quota_settle_failed",
                        reservation=str(held.reservation.id),
                        attempt=attempts,
                        error=repr(exc),
                    )
                    delay = min(delay * 2, 10.0)
                    continue
                QUOTA_SETTLE_RETRIES.labels("recovered").inc()
                log.info(
                    "quota_settle_recovered",
                    reservation=str(held.reservation.id),
                    attempts=attempts,
                )
                self._note(held, result)
                return
        except asyncio.CancelledError:  # shutting down: aclose gave up waiting
            self._abandon(held, used, cost, attempts)
            raise
        self._abandon(held, used, cost, attempts)

    def _abandon(self, held: _Held, used: int, cost: int, attempts: int) -> None:
        # The quota counters and the ledger miss the usage (the reservation expires and frees its
        # hold): logged with what an operator needs to add it back.
        QUOTA_SETTLE_RETRIES.labels("abandoned").inc()
        log.error(
            "quota_settle_abandoned",
            reservation=str(held.reservation.id),
            user_id=str(held.reservation.user_id),
            period_start=held.reservation.period_start.isoformat(),
            used_tokens=used,
            used_cost_nanos=cost,
            attempts=attempts,
            # Written with the settlement, the record is lost with it: kept here, in the log.
            record=held.record,
        )

    def _note(self, held: _Held, result: SettleResult) -> None:
        if result == "late":
            log.warning(
                "quota_reservation_expired_before_settle",
                reservation=str(held.reservation.id),
                user_id=str(held.reservation.user_id),
            )
        elif result == "duplicate":
            log.info("quota_settle_duplicate", reservation=str(held.reservation.id))

    async def aclose(self, grace: float = 10.0) -> None:
        """Wait a little for settlements being retried, then abandon them (each is logged)."""
        if not self._retries:
            return
        _, pending = await asyncio.wait(set(self._retries), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
