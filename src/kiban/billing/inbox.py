"""The webhook inbox: receive a Stripe event once, apply it, re-apply it, and what waits.

Each delivery is one transaction whose first statement is the inbox insert (docs/decisions/0041);
applying it folds the subscription's events again (``billing.handlers``). An event whose
application raised is kept with the outcome ``failed``: Stripe's redelivery of it, a re-apply
from the admin API, or ``kiban billing reconcile`` applies it again. Every delivery is counted
in ``kiban_webhook_events_total{type,outcome}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import structlog
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kiban.billing import exceptions as exc
from kiban.billing import repository as repo
from kiban.billing.fold import FAILED, PENDING, UNMATCHED
from kiban.billing.handlers import Applied, apply_event, refold, subscription_id_of
from kiban.billing.webhooks import StripeEvent, parse_event, verify_signature
from kiban.core.db import session_scope
from kiban.core.errors import AppError
from kiban.core.metrics import WEBHOOK_EVENTS
from kiban.models.billing import WebhookEvent
from kiban.settings import Settings

log = structlog.get_logger("kiban.billing")

T = TypeVar("T")


@dataclass(frozen=True)
class Receipt:
    event_id: str
    type: str
    duplicate: bool
    outcome: str | None


def webhook_secrets(settings: Settings) -> list[str]:
    """The webhook signing secrets (several while rolling), or 503 webhook_not_configured."""
    raw = (
        settings.stripe_webhook_secret.get_secret_value() if settings.stripe_webhook_secret else ""
    )
    secrets = [s.strip() for s in raw.split(",") if s.strip()]
    if not secrets:
        raise exc.WebhookNotConfigured()
    return secrets


def _retryable(error: DBAPIError) -> bool:
    # Deadlock, serialization failure (PostgreSQL), or a busy SQLite: the transaction did nothing
    # and can simply run again.
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return code in ("40P01", "40001") or "database is locked" in str(error.orig)


async def _retrying(work: Callable[[], Awaitable[T]], event_id: str) -> T:
    for attempt in range(4):
        try:
            return await work()
        except DBAPIError as e:
            if attempt == 3 or not _retryable(e):
                raise
            log.warning("webhook_retry", event_id=event_id, attempt=attempt + 1, error=str(e.orig))
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


async def receive_webhook(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    payload: bytes,
    signature: str | None,
    grace: timedelta,
) -> Receipt:
    """Verify, record once in the inbox and apply, all in one transaction per event."""
    try:
        secrets = webhook_secrets(settings)
        verify_signature(
            payload, signature, secrets, tolerance=settings.stripe_webhook_tolerance_seconds
        )
        event = parse_event(payload)
    except AppError as e:
        WEBHOOK_EVENTS.labels(type="unverified", outcome=e.error_code).inc()
        raise
    try:
        receipt = await _retrying(lambda: _record_and_apply(sessionmaker, event, grace), event.id)
    except (DBAPIError, AppError):
        WEBHOOK_EVENTS.labels(type=event.type, outcome="error").inc()
        raise
    except Exception as e:
        # A bug, or an event our readers cannot handle: kept in the inbox as failed, and a 500
        # so that Stripe redelivers it (which applies it again).
        log.exception("webhook_failed", event_id=event.id, type=event.type)
        detail = f"{type(e).__name__}: {e}"
        await _retrying(lambda: _record_failure(sessionmaker, event, detail), event.id)
        WEBHOOK_EVENTS.labels(type=event.type, outcome=FAILED).inc()
        raise
    outcome = "duplicate" if receipt.duplicate else (receipt.outcome or "")
    WEBHOOK_EVENTS.labels(type=event.type, outcome=outcome).inc()
    return receipt


async def _record_and_apply(
    sessionmaker: async_sessionmaker[AsyncSession], event: StripeEvent, grace: timedelta
) -> Receipt:
    async with session_scope(sessionmaker) as session:
        # The insert comes first: it is the lock (PostgreSQL waits on the unique key, SQLite's
        # writer lock is taken now), and a duplicate stops here, before any read.
        if not await repo.record_event(session, event, subscription_id_of(event)):
            stored = await repo.inbox_event(session, event.id)
            if stored is None or stored.outcome != FAILED:
                log.info("webhook_duplicate", event_id=event.id, type=event.type)
                return Receipt(event.id, event.type, duplicate=True, outcome=None)
            log.info("webhook_redelivered_after_failure", event_id=event.id, type=event.type)
        applied = await apply_event(session, event, grace)
    log.info("webhook_applied", event_id=event.id, type=event.type, outcome=applied.outcome)
    return Receipt(event.id, event.type, duplicate=False, outcome=applied.outcome)


async def _record_failure(
    sessionmaker: async_sessionmaker[AsyncSession], event: StripeEvent, detail: str
) -> None:
    async with session_scope(sessionmaker) as session:
        await repo.record_event(session, event, subscription_id_of(event))
        await repo.mark_event(session, event.id, FAILED, detail)


def event_of(row: WebhookEvent) -> StripeEvent:
    """The Stripe event an inbox row holds."""
    data = row.payload.get("data") if isinstance(row.payload, dict) else None
    obj = data.get("object") if isinstance(data, dict) else None
    return StripeEvent(
        id=row.stripe_event_id,
        type=row.type,
        created=row.created,
        livemode=row.livemode,
        object=obj if isinstance(obj, dict) else {},
        payload=row.payload,
    )


async def reapply_event(
    sessionmaker: async_sessionmaker[AsyncSession], event_id: str, grace: timedelta
) -> Applied:
    """Apply an inbox event again (after a fix, or once its user exists); 404 if unknown."""

    async def work() -> Applied:
        async with session_scope(sessionmaker) as session:
            stored = await repo.inbox_event(session, event_id)
            if stored is None:
                raise exc.UnknownEvent(f"The inbox has no event {event_id!r}.")
            return await apply_event(session, event_of(stored), grace)

    return await _retrying(work, event_id)


async def reapply_waiting(
    sessionmaker: async_sessionmaker[AsyncSession], grace: timedelta
) -> list[tuple[str, str, str]]:
    """Apply again every event still pending, unmatched or failed.

    Returns ``(event id, outcome before, outcome after)`` for those whose outcome changed. One
    transaction per subscription (or per event, for those about none).
    """
    async with session_scope(sessionmaker) as session:
        waiting = (
            await session.execute(
                select(WebhookEvent.stripe_event_id, WebhookEvent.subscription_id).where(
                    WebhookEvent.outcome.in_([PENDING, UNMATCHED, FAILED])
                )
            )
        ).all()
        before = await _outcomes(session, [event_id for event_id, _ in waiting])
    subscriptions = sorted({sub_id for _, sub_id in waiting if sub_id is not None})
    for sub_id in subscriptions:

        async def refold_one(sub_id: str = sub_id) -> None:
            async with session_scope(sessionmaker) as session:
                await refold(session, sub_id, grace)

        await _retrying(refold_one, sub_id)
    for event_id, about in waiting:
        if about is None:
            await reapply_event(sessionmaker, event_id, grace)
    async with session_scope(sessionmaker) as session:
        after = await _outcomes(session, list(before))
    return [(e, before[e], after[e]) for e in before if after.get(e) != before[e]]


async def _outcomes(session: AsyncSession, event_ids: list[str]) -> dict[str, str]:
    if not event_ids:
        return {}
    rows = await session.execute(
        select(WebhookEvent.stripe_event_id, WebhookEvent.outcome).where(
            WebhookEvent.stripe_event_id.in_(event_ids)
        )
    )
    return {event_id: outcome or "" for event_id, outcome in rows.all()}
