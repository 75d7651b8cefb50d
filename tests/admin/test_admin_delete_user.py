"""DELETE /admin/users/{id}: the account goes, with its documents, vectors and term statistics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from kiban.app import create_app
from kiban.models import Document, KnowledgeTerm, Role, User
from kiban.models.knowledge import ChunkVector
from kiban.settings import Settings
from tests.conftest import RunningApp, auth_headers, create_user, make_client


@pytest.fixture
async def hybrid_app(make_settings: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    async with RunningApp(create_app(make_settings(embedder="local"))) as running:
        yield running


async def test_deleting_a_user_removes_their_vectors_and_their_share_of_the_statistics(
    hybrid_app: FastAPI,
) -> None:
    async with hybrid_app.state.sessionmaker() as s:
        admin = await create_user(s, role=Role.ADMIN)
        owner = await create_user(s)
        before = dict((await s.execute(select(KnowledgeTerm.term, KnowledgeTerm.df))).all())
    async with make_client(hybrid_app) as client:
        uploaded = await client.post(
            "/ai/upload",
            headers=auth_headers(hybrid_app, owner),
            files={"files": ("refunds.md", "払い戻しは14日以内に受け付けます。".encode())},
        )
        assert uploaded.status_code == 201
        hybrid_app.state.retriever.queue.notify()
        await asyncio.wait_for(hybrid_app.state.retriever.queue.wait_idle(), 60)
        async with hybrid_app.state.sessionmaker() as s:
            assert (await s.execute(select(func.count()).select_from(ChunkVector))).scalar() == 1
        response = await client.delete(
            f"/admin/users/{owner.id}", headers=auth_headers(hybrid_app, admin)
        )
        assert response.status_code == 204, response.text
        refused = await client.get("/documents", headers=auth_headers(hybrid_app, owner))
        assert refused.status_code == 401
        themselves = await client.delete(
            f"/admin/users/{admin.id}", headers=auth_headers(hybrid_app, admin)
        )
        assert themselves.status_code == 409
    async with hybrid_app.state.sessionmaker() as s:
        assert await s.get(User, owner.id) is None
        assert (await s.execute(select(func.count()).select_from(Document))).scalar() == 0
        assert (await s.execute(select(func.count()).select_from(ChunkVector))).scalar() == 0
        after = dict((await s.execute(select(KnowledgeTerm.term, KnowledgeTerm.df))).all())
    assert {t: df for t, df in after.items() if df} == {t: df for t, df in before.items() if df}


async def test_only_admins_delete_users(client: httpx.AsyncClient, app: FastAPI) -> None:
    async with app.state.sessionmaker() as s:
        user = await create_user(s)
        other = await create_user(s)
    response = await client.delete(f"/admin/users/{other.id}", headers=auth_headers(app, user))
    assert response.status_code == 403
