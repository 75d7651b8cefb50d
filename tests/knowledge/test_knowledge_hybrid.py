"""Vectors, the embedding queue and hybrid retrieval, through the real app on both databases.

The local model (multilingual-e5-small in process) embeds these few chunks in a second or two.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from kiban.app import create_app
from kiban.core.db import session_scope
from kiban.knowledge import service
from kiban.knowledge.documents import forget_owner
from kiban.knowledge.embedding import LOCAL_MODEL, Kind, LocalEmbedder, Vectors
from kiban.knowledge.indexing import index_document, remove_document
from kiban.knowledge.queue import EmbeddingQueue, embed_pending
from kiban.knowledge.vectors import SharedVectors, count_pending
from kiban.models import Document, KnowledgeTerm
from kiban.models.knowledge import ChunkVector
from kiban.settings import Settings
from tests.conftest import RunningApp, auth_headers, create_user, make_client
from tests.knowledge.conftest import search

REFUND = (
    "払い戻しについて: ご購入から14日以内であれば、理由を問わず全額をお戻しします。"
    "お戻しした金額は、元の決済手段に5営業日ほどで反映されます。"
)
PASSWORD = "パスワードを忘れた場合は、ログイン画面の再設定リンクから新しいものを設定してください。"
ENGLISH = (
    "Cancelling: you can stop your subscription at any time from the billing page; you keep "
    "access until the end of the period you paid for."
)


@pytest.fixture
async def hybrid_app(make_settings: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    async with RunningApp(create_app(make_settings(embedder="local"))) as running:
        yield running


@pytest.fixture
async def hybrid_client(hybrid_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(hybrid_app) as c:
        yield c


async def upload(
    client: httpx.AsyncClient, headers: dict[str, str], name: str, body: str, **form: Any
) -> str:
    response = await client.post(
        "/ai/upload", headers=headers, files={"files": (name, body.encode())}, data=form
    )
    assert response.status_code == 201, response.text
    document_id: str = response.json()["document_id"]
    return document_id


async def embedded(app: FastAPI) -> None:
    retriever: service.Retriever = app.state.retriever
    assert retriever.queue is not None
    retriever.queue.notify()
    await asyncio.wait_for(retriever.queue.wait_idle(), 60)


async def test_a_paraphrased_question_ranks_its_passage_first_by_meaning(
    hybrid_app: FastAPI, hybrid_client: httpx.AsyncClient
) -> None:
    async with hybrid_app.state.sessionmaker() as s:
        user = await create_user(s)
    headers = auth_headers(hybrid_app, user)
    await upload(hybrid_client, headers, "refunds.md", REFUND)
    await upload(hybrid_client, headers, "login.md", PASSWORD)
    await embedded(hybrid_app)
    body = await search(hybrid_client, headers, "返金してもらえる期限は？")
    assert body["results"][0]["filename"] == "refunds.md"
    # BM25 alone finds nothing: the question shares no word with the passage.
    async with hybrid_app.state.sessionmaker() as s:
        lexical = await service.retrieve(s, user_id=user.id, query="返金してもらえる期限は？")
    assert lexical.chunks == []


async def test_an_unrelated_question_is_still_refused(
    hybrid_app: FastAPI, hybrid_client: httpx.AsyncClient
) -> None:
    async with hybrid_app.state.sessionmaker() as s:
        user = await create_user(s)
    headers = auth_headers(hybrid_app, user)
    await upload(hybrid_client, headers, "refunds.md", REFUND)
    await upload(hybrid_client, headers, "cancel.md", ENGLISH)
    await embedded(hybrid_app)
    for question in ("富士山の高さは何メートルですか？", "Who painted the Mona Lisa?"):
        body = await search(hybrid_client, headers, question)
        assert not any(r["relevant"] for r in body["results"]), (question, body)


async def test_documents_say_when_they_are_embedded(
    hybrid_app: FastAPI, hybrid_client: httpx.AsyncClient
) -> None:
    async with hybrid_app.state.sessionmaker() as s:
        user = await create_user(s)
    headers = auth_headers(hybrid_app, user)
    await upload(hybrid_client, headers, "cancel.md", ENGLISH)
    await embedded(hybrid_app)
    listed = (await hybrid_client.get("/documents", headers=headers)).json()["documents"]
    assert [(d["embedded"], d["embedded_chunks"]) for d in listed] == [(True, 1)]


class BlockedEmbedder:
    """The local model behind a gate the test opens: uploads must not wait for it."""

    model = LOCAL_MODEL
    dimensions = 384
    description = "blocked"

    def __init__(self) -> None:
        self.inner = LocalEmbedder()
        self.open = asyncio.Event()

    async def embed(self, texts: Sequence[str], kind: Kind) -> Vectors:
        if kind == "passage":
            await self.open.wait()
        return await self.inner.embed(texts, kind)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    async def aclose(self) -> None:
        return None


async def test_an_upload_returns_before_its_chunks_are_embedded(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    blocked = BlockedEmbedder()
    retriever: service.Retriever = app.state.retriever
    retriever.embedder = blocked  # type: ignore[assignment]
    retriever.queue = EmbeddingQueue(app.state.sessionmaker, blocked, poll_seconds=0.2)  # type: ignore[arg-type]
    retriever.queue.start()
    document_id = await asyncio.wait_for(upload(client, user_headers, "c.md", ENGLISH), 10)
    listed = (await client.get("/documents", headers=user_headers)).json()["documents"]
    assert listed[0]["document_id"] == document_id
    assert listed[0]["embedded"] is False
    # Still found by its words meanwhile.
    body = await search(client, user_headers, "cancel subscription billing page")
    assert body["results"]
    assert body["results"][0]["relevant"]
    blocked.open.set()
    await embedded(app)
    listed = (await client.get("/documents", headers=user_headers)).json()["documents"]
    assert listed[0]["embedded"] is True
    await retriever.close()


async def test_chunks_stored_without_vectors_are_embedded_at_start_up(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()  # no embedder: the chunks are stored without vectors
    async with RunningApp(create_app(settings)) as plain:
        async with session_scope(plain.state.sessionmaker) as s:
            for i, body in enumerate((REFUND, PASSWORD, ENGLISH)):
                await index_document(
                    s,
                    owner_id=None,
                    shared=True,
                    filename=f"d{i}.md",
                    content_type="text/markdown",
                    encoding="utf-8",
                    text=body,
                )
        async with plain.state.sessionmaker() as s:
            assert await count_pending(s, LOCAL_MODEL) == 3
    async with RunningApp(create_app(make_settings(embedder="local"))) as restarted:
        await asyncio.wait_for(restarted.state.retriever.queue.wait_idle(), 60)
        async with restarted.state.sessionmaker() as s:
            assert await count_pending(s, LOCAL_MODEL) == 0


async def test_another_users_private_chunks_never_come_back_by_meaning(
    hybrid_app: FastAPI, hybrid_client: httpx.AsyncClient
) -> None:
    async with hybrid_app.state.sessionmaker() as s:
        owner = await create_user(s)
        other = await create_user(s)
    await upload(hybrid_client, auth_headers(hybrid_app, owner), "refunds.md", REFUND)
    await embedded(hybrid_app)
    body = await search(hybrid_client, auth_headers(hybrid_app, other), "返金の期限")
    assert body["results"] == []
    async with hybrid_app.state.sessionmaker() as s:
        mine = await service.retrieve(
            s, user_id=owner.id, query="返金の期限", retriever=hybrid_app.state.retriever
        )
    assert mine.chunks
    assert mine.chunks[0].filename == "refunds.md"


async def test_the_shared_vector_cache_follows_inserts_and_deletes(hybrid_app: FastAPI) -> None:
    sessionmaker = hybrid_app.state.sessionmaker
    embedder = LocalEmbedder()
    cache = SharedVectors()

    async def add(body: str) -> Document:
        async with session_scope(sessionmaker) as s:
            result = await index_document(
                s,
                owner_id=None,
                shared=True,
                filename=f"{uuid.uuid4().hex}.md",
                content_type="text/markdown",
                encoding="utf-8",
                text=body,
            )
        await embed_pending(sessionmaker, embedder)
        return result.document

    first = await add(REFUND)
    async with sessionmaker() as s:
        ids, matrix = await cache.get(s, LOCAL_MODEL)
    assert len(ids) == 1
    assert matrix.shape == (1, 384)
    await add(ENGLISH)
    async with sessionmaker() as s:
        ids, _ = await cache.get(s, LOCAL_MODEL)
    assert len(ids) == 2
    async with session_scope(sessionmaker) as s:
        document = await s.get(Document, first.id)
        assert document is not None
        await remove_document(s, document)
    async with sessionmaker() as s:
        ids, matrix = await cache.get(s, LOCAL_MODEL)
        remaining = (await s.execute(select(ChunkVector.chunk_id))).scalars().all()
    assert sorted(ids.tolist()) == sorted(remaining)
    assert len(ids) == 1
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)


async def test_forgetting_a_user_removes_their_vectors_and_their_term_statistics(
    hybrid_app: FastAPI, hybrid_client: httpx.AsyncClient
) -> None:
    async with hybrid_app.state.sessionmaker() as s:
        owner = await create_user(s)
        before = dict((await s.execute(select(KnowledgeTerm.term, KnowledgeTerm.df))).all())
    await upload(hybrid_client, auth_headers(hybrid_app, owner), "refunds.md", REFUND)
    await embedded(hybrid_app)
    async with session_scope(hybrid_app.state.sessionmaker) as s:
        assert await forget_owner(s, owner.id) == 1
    async with hybrid_app.state.sessionmaker() as s:
        after = dict((await s.execute(select(KnowledgeTerm.term, KnowledgeTerm.df))).all())
        vectors = (await s.execute(select(func.count()).select_from(ChunkVector))).scalar_one()
    assert vectors == 0
    assert {t: df for t, df in after.items() if df} == {t: df for t, df in before.items() if df}
