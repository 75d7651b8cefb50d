"""The ledger writer's edges: a record after ``close()``, a record the database refuses."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from fastapi import FastAPI

from kiban.core.metrics import REGISTRY
from kiban.usage import LedgerWriter
from tests.factories import ledger, ledger_record


@pytest.fixture(autouse=True)
def _no_ledger_drops() -> None:
    """Replaces the package's guard: this test drops one record on purpose (and checks it)."""


def dropped_total() -> float:
    return REGISTRY.get_sample_value("kiban_ledger_records_dropped_total") or 0.0


async def test_a_record_submitted_after_close_is_counted_as_dropped(app: FastAPI) -> None:
    writer = LedgerWriter(app.state.sessionmaker, flush_interval=0.0)
    writer.start()
    writer.submit(ledger_record())
    await writer.close()
    before = dropped_total()
    writer.submit(ledger_record())  # e.g. a stream cancelled at shutdown, finishing late
    assert (writer.written, writer.dropped) == (1, 1)
    assert dropped_total() == before + 1
    assert len(await ledger(app)) == 1


async def test_a_record_the_database_refuses_does_not_stall_the_others(app: FastAPI) -> None:
    # A record whose user no longer exists (deleted while the request ran) breaks the foreign
    # key: retrying its batch forever would hold back every record after it.
    writer = LedgerWriter(app.state.sessionmaker, flush_interval=0.0, max_backoff=0.05)
    writer.start()
    orphan = ledger_record(uuid.uuid4())
    writer.submit(ledger_record())
    writer.submit(orphan)
    writer.submit(ledger_record())
    await asyncio.wait_for(writer.flush(), 5)
    await writer.close()
    assert (writer.written, writer.dropped) == (3, 0)
    [kept] = [r for r in await ledger(app) if r.request_id == orphan["request_id"]]
    assert kept.user_id is None
