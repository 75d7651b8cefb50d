"""`kiban knowledge reindex` and `reembed`: rebuilt BM25 statistics, vectors of the active model."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, func, select
from typer.testing import CliRunner

from kiban.cli import app as cli
from kiban.core.db import session_scope
from kiban.knowledge import service
from kiban.knowledge.embedding import LOCAL_MODEL, LocalEmbedder
from kiban.knowledge.indexing import index_document
from kiban.knowledge.ranking import profile_query, visible_scopes
from kiban.knowledge.search import bm25_candidates
from kiban.knowledge.vectors import count_pending, store_vectors
from kiban.models import KnowledgeTerm
from kiban.models.knowledge import ChunkVector, DocumentChunk

TEXTS = [
    "梅雨は日本の雨季である。梅雨前線が停滞すると雨が続く。",
    "Webhooks are signed with a secret. Verify the signature of every webhook.",
    "API keys are shown once. Store the API key in a secret manager.",
]


async def _index(app: FastAPI) -> None:
    async with session_scope(app.state.sessionmaker) as s:
        for i, body in enumerate(TEXTS):
            await index_document(
                s,
                owner_id=None,
                shared=True,
                filename=f"doc{i}.txt",
                content_type="text/plain",
                encoding="utf-8",
                text=body,
            )


async def _bm25(app: FastAPI, query: str) -> list[tuple[int, float]]:
    async with app.state.sessionmaker() as s:
        profile = await profile_query(s, query)
        return await bm25_candidates(
            s, profile.terms, visible_scopes(uuid.uuid4()), profile.stats, 10
        )


async def test_reindex_rebuilds_the_index_and_the_statistics(
    app: FastAPI, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _index(app)
    async with app.state.sessionmaker() as s:
        before = sorted((await s.execute(select(KnowledgeTerm.term, KnowledgeTerm.df))).all())
    scores = await _bm25(app, "webhook signature secret")
    async with session_scope(app.state.sessionmaker) as s:  # statistics gone astray
        await s.execute(delete(KnowledgeTerm))
        await s.execute(DocumentChunk.__table__.update().values(terms="", term_count=0))
    monkeypatch.setenv("KIBAN_DATABASE_URL", database_url)
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["knowledge", "reindex"])
    assert result.exit_code == 0, result.output
    assert "3 chunks analyzed again" in result.output
    async with app.state.sessionmaker() as s:
        after = sorted((await s.execute(select(KnowledgeTerm.term, KnowledgeTerm.df))).all())
    assert after == before
    rebuilt = await _bm25(app, "webhook signature secret")
    assert [i for i, _ in rebuilt] == [i for i, _ in scores]
    assert [x for _, x in rebuilt] == pytest.approx([x for _, x in scores])


async def test_reembed_gives_every_chunk_a_vector_and_drops_other_models(
    app: FastAPI, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _index(app)
    async with session_scope(app.state.sessionmaker) as s:
        ids = (await s.execute(select(DocumentChunk.id, DocumentChunk.scope))).all()
        old = np.ones(8, dtype=np.float32) / np.sqrt(8)
        await store_vectors(s, "old-model", [(i, scope, old) for i, scope in ids])
    monkeypatch.setenv("KIBAN_DATABASE_URL", database_url)
    monkeypatch.setenv("KIBAN_EMBEDDER", "local")
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["knowledge", "reembed"])
    assert result.exit_code == 0, result.output
    assert "3 chunks embedded" in result.output
    async with app.state.sessionmaker() as s:
        assert await count_pending(s, LOCAL_MODEL) == 0
        models = (
            await s.execute(select(ChunkVector.model, func.count()).group_by(ChunkVector.model))
        ).all()
    assert models == [(LOCAL_MODEL, 3)]
    retriever = service.Retriever(embedder=LocalEmbedder())
    async with app.state.sessionmaker() as s:
        found = await service.retrieve(
            s, user_id=uuid.uuid4(), query="梅雨の季節", retriever=retriever
        )
    assert found.chunks[0].filename == "doc0.txt"
