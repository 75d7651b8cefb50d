"""Helpers for the gateway tests (imported by the test modules)."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from kiban.models import UsageRecord
from tests.fake_upstream import DEFAULT_REPLY, FakeUpstream, Fault

__all__ = ["DEFAULT_REPLY", "FakeUpstream", "Fault", "ledger", "sse_events", "upload"]


async def ledger(app: FastAPI) -> list[UsageRecord]:
    """Every ledger record, oldest first, after the writer has written what it was given."""
    await app.state.gateway.ledger.flush()
    async with app.state.sessionmaker() as session:
        return list((await session.scalars(select(UsageRecord).order_by(UsageRecord.id))).all())


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs of a server-sent events body; comments appear as ("comment", text)."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                events.append(("comment", line[1:].strip()))
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((event, "\n".join(data)))
    return events


async def upload(
    client: httpx.AsyncClient, headers: dict[str, str], name: str, text: str
) -> dict[str, Any]:
    """Upload a document through the knowledge API (what grounded answers quote)."""
    response = await client.post(
        "/ai/upload", headers=headers, files={"files": (name, text.encode(), "text/plain")}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())
