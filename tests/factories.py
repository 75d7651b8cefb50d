"""Shared factories for usage records and uploads: the one place tests write or read the ledger.

- ``make_records`` builds varied ledger records; ``write_records`` inserts them as the ledger
  writer does (with their rollups, in one transaction); ``spend`` writes one record of N tokens;
  ``seed_ledger`` does both for a ``LedgerSpec`` (the admin tests' ``ledger`` fixture).
- ``ledger_record`` is one record as the dict the ledger writer is given.
- ``ledger`` reads every record back after the app's writer has written what it was given;
  ``ledger_count`` counts a user's records through a connection of its own (another process's
  app).
- ``upload`` posts one file to ``/ai/upload``.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.core import clock
from kiban.core.db import create_engine, create_sessionmaker
from kiban.models import UsageRecord, User
from kiban.usage import rollups

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)
MODELS = ("gpt-4o-mini", "gpt-4o", "extractive")
ENDPOINTS = ("ai_test", "ai_stream", "chat_completions")
STATUS_WEIGHTS = {"ok": 70, "no_context": 8, "error": 8, "cancelled": 4, "rejected": 10}


# --- writing ----------------------------------------------------------------------------------


def make_records(
    n: int, users: Sequence[uuid.UUID | None], *, seed: int = 7, hours: int = 72
) -> list[UsageRecord]:
    """``n`` varied ledger records over ``hours`` hours from T0 (ties and nulls included)."""
    rnd = random.Random(seed)
    records = []
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    for i in range(n):
        status = rnd.choices(statuses, weights)[0]
        model = rnd.choice(MODELS)
        endpoint = rnd.choice(ENDPOINTS)
        rejected = status == "rejected"
        prompt = 0 if rejected else rnd.randint(1, 2000)
        completion = 0 if rejected or status == "no_context" else rnd.randint(0, 800)
        priced = model != "extractive" and not rejected
        cost = (
            (
                Decimal(prompt) * Decimal("0.00000015") + Decimal(completion) * Decimal("0.0000006")
            ).quantize(Decimal("1e-10"))
            if priced
            else None
        )
        # Integer-ish latencies repeat, so percentile ties are exercised.
        latency = float(rnd.choice([rnd.randint(5, 60), round(rnd.lognormvariate(5, 1), 3)]))
        streamed = endpoint == "ai_stream" and not rejected
        records.append(
            UsageRecord(
                request_id=f"req-{seed}-{i}",
                created_at=T0 + timedelta(seconds=rnd.uniform(0, hours * 3600)),
                user_id=rnd.choice(users),
                plan=rnd.choice(["free", "pro", None]),
                endpoint=endpoint,
                model=model,
                provider="extractive" if model == "extractive" else "openai",
                streamed=streamed,
                status=status,
                error_code="upstream_error" if status == "error" else None,
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                estimated_cost=cost,
                response_time_ms=0.0 if rejected else latency,
                time_to_first_token_ms=round(latency / 3, 3) if streamed else None,
                source_ids=[rnd.randint(1, 50)] if status == "ok" and rnd.random() < 0.5 else None,
            )
        )
    return records


async def write_records(session: AsyncSession, records: list[UsageRecord]) -> None:
    """Insert ledger records as the ledger writer does: with their rollups, in one transaction."""
    columns = [c.key for c in UsageRecord.__table__.columns if c.key != "id"]
    await rollups.add(session, [{c: getattr(r, c) for c in columns} for r in records])
    session.add_all(records)
    await session.commit()


async def spend(
    session: AsyncSession, user: User, tokens: int, at: datetime, status: str = "ok"
) -> None:
    """One ledger record of ``tokens`` for ``user`` at ``at``, written as the writer does."""
    record = UsageRecord(
        request_id=f"q-{user.id}-{tokens}-{status}-{at.timestamp()}",
        created_at=at,
        user_id=user.id,
        endpoint="ai_test",
        model="gpt-4o-mini",
        provider="openai",
        status=status,
        prompt_tokens=tokens,
        completion_tokens=0,
        total_tokens=tokens,
        response_time_ms=100.0,
    )
    await write_records(session, [record])


@dataclass(frozen=True)
class LedgerSpec:
    """What a seeded ledger holds: ``records`` from ``make_records`` over 72 hours from T0,
    spread over ``owners`` (user ids, None for no user), then one record of ``owners[0]`` at
    each of ``also_at`` (a window's exact edges)."""

    records: int
    owners: tuple[str | None, ...]  # names the caller maps to user ids ("user", "admin")
    seed: int = 7
    also_at: tuple[datetime, ...] = ()


async def seed_ledger(
    session: AsyncSession, spec: LedgerSpec, owners: Sequence[uuid.UUID | None]
) -> list[UsageRecord]:
    """Write the ledger ``spec`` describes (``owners`` are its owners' ids, in order)."""
    records = make_records(spec.records, list(owners), seed=spec.seed)
    if spec.also_at:
        extra = make_records(len(spec.also_at), [owners[0]], seed=99, hours=0)
        for record, at in zip(extra, spec.also_at, strict=True):
            record.created_at = at
        records += extra
    await write_records(session, records)
    return records


def ledger_record(user_id: uuid.UUID | None = None, **fields: object) -> dict[str, object]:
    """One ledger record as the dict the ledger writer is given (``fields`` override)."""
    values: dict[str, object] = {
        "request_id": uuid.uuid4().hex,
        "created_at": clock.now(),
        "user_id": user_id,
        "api_key_id": None,
        "plan": None,
        "endpoint": "ai_test",
        "model": "extractive",
        "provider": "extractive",
        "streamed": False,
        "status": "ok",
        "error_code": None,
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "cached_tokens": 0,
        "estimated_cost": None,
        "response_time_ms": 1.0,
        "time_to_first_token_ms": None,
        "source_ids": None,
        "prompt_text": None,
        "response_text": None,
    }
    values.update(fields)
    return values


# --- reading ----------------------------------------------------------------------------------


async def ledger(app: FastAPI) -> list[UsageRecord]:
    """Every ledger record, oldest first, after the writer has written what it was given (and,
    with Redis, the settle stream is drained into the database)."""
    await app.state.gateway.ledger.flush()
    admission = getattr(app.state, "admission", None)
    drain = getattr(getattr(admission, "store", None), "drain", None)
    if drain is not None:
        await drain()
    async with app.state.sessionmaker() as session:
        return list((await session.scalars(select(UsageRecord).order_by(UsageRecord.id))).all())


async def ledger_count(database_url: str, user_id: uuid.UUID) -> int:
    """How many ledger records ``user_id`` has, read through an engine of its own."""
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            query = select(func.count()).where(UsageRecord.user_id == user_id)
            return int(await session.scalar(query) or 0)
    finally:
        await engine.dispose()


# --- uploads ----------------------------------------------------------------------------------


async def upload(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    filename: str,
    data: bytes | str,
    *,
    shared: bool = False,
    content_type: str = "application/octet-stream",
    expect: int | None = None,
) -> httpx.Response:
    """POST one file to /ai/upload; with ``expect``, assert the response has that status."""
    body = data.encode("utf-8") if isinstance(data, str) else data
    response = await client.post(
        "/ai/upload",
        headers=headers,
        files={"files": (filename, body, content_type)},
        data={"shared": "true"} if shared else None,
    )
    if expect is not None:
        assert response.status_code == expect, response.text
    return response
