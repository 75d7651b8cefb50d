"""BM25 on each database equals the formula computed by hand from the stored chunks."""

from __future__ import annotations

import asyncio
import math
import uuid
import warnings

import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.core.db import session_scope
from kiban.knowledge import service
from kiban.knowledge.indexing import index_document, remove_document
from kiban.knowledge.ranking import CANDIDATES, profile_query, visible_scopes
from kiban.knowledge.search import K1, B, bm25_candidates
from kiban.models import Document
from kiban.models.knowledge import DocumentChunk
from tests.conftest import create_user

TEXTS = [
    "梅雨は日本の雨季である。梅雨前線が停滞すると雨が続く。",
    "台風は夏から秋に日本へ来る。台風の雨と風は強い。",
    "Webhooks are signed with a secret. Verify the signature of every webhook.",
    "API keys are shown once. Store the API key in a secret manager.",
    "梅雨の時期には湿度が高い。",
]


def reference_bm25(chunks: list[list[str]], query: list[str]) -> list[float]:
    """FTS5's BM25 from first principles."""
    n = len(chunks)
    avgdl = sum(len(c) for c in chunks) / n
    scores = []
    for chunk in chunks:
        score = 0.0
        for term in dict.fromkeys(query):
            df = sum(term in c for c in chunks)
            idf = max(1e-6, math.log((n - df + 0.5) / (df + 0.5)))
            tf = chunk.count(term)
            dl = len(chunk)
            score += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * dl / avgdl))
        scores.append(score)
    return scores


async def test_bm25_matches_the_reference_on_this_database(app: FastAPI) -> None:
    owner = None
    async with session_scope(app.state.sessionmaker) as session:
        for i, body in enumerate(TEXTS):
            await index_document(
                session,
                owner_id=owner,
                shared=True,
                filename=f"doc{i}.txt",
                content_type="text/plain",
                encoding="utf-8",
                text=body,
            )
    async with app.state.sessionmaker() as session:
        chunks = (await session.execute(select(DocumentChunk.id, DocumentChunk.terms))).all()
        ids = [c.id for c in chunks]
        terms = [c.terms.split() for c in chunks]
        for query in ("梅雨の雨", "webhook secret signature", "台風と梅雨", "API key secret"):
            profile = await profile_query(session, query)
            hits = dict(
                await bm25_candidates(
                    session, profile.terms, visible_scopes(uuid.uuid4()), profile.stats, 50
                )
            )
            expected = dict(zip(ids, reference_bm25(terms, profile.terms), strict=True))
            for chunk_id, score in expected.items():
                if score > 0:
                    assert math.isclose(hits[chunk_id], score, rel_tol=1e-6), (query, chunk_id)
                else:
                    assert chunk_id not in hits


async def test_term_statistics_follow_deletes(app: FastAPI, session: AsyncSession) -> None:
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
    async with session_scope(app.state.sessionmaker) as s:
        for document in (await s.execute(select(Document))).scalars().all()[:2]:
            await remove_document(s, document)
    async with app.state.sessionmaker() as s:
        remaining = [r.split() for r in (await s.execute(select(DocumentChunk.terms))).scalars()]
        profile = await profile_query(s, "梅雨 台風 webhook api")
        for term in profile.terms:
            assert profile.stats.df.get(term, 0) == sum(term in c for c in remaining), term
        assert profile.stats.chunks == len(remaining)
        assert profile.stats.terms == sum(len(c) for c in remaining)


async def test_concurrent_deletes_of_one_document_subtract_its_terms_once(app: FastAPI) -> None:
    if app.state.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes writers: two deletes cannot interleave")
    async with session_scope(app.state.sessionmaker) as s:
        for i, body in enumerate(TEXTS[:2]):
            await index_document(
                s,
                owner_id=None,
                shared=True,
                filename=f"doc{i}.txt",
                content_type="text/plain",
                encoding="utf-8",
                text=body,
            )
    async with app.state.sessionmaker() as first, app.state.sessionmaker() as second:
        document_id = (await first.execute(select(Document.id).limit(1))).scalar_one()
        await remove_document(first, await first.get_one(Document, document_id))
        document = await second.get_one(Document, document_id)
        # The second delete (a double click) runs while the first is not yet committed.
        racing = asyncio.create_task(remove_document(second, document))
        await asyncio.sleep(0.3)
        await first.commit()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "expected to delete 1 row(s); 0 were matched"
            await racing
        await second.commit()
    async with app.state.sessionmaker() as s:
        remaining = [r.split() for r in (await s.execute(select(DocumentChunk.terms))).scalars()]
        profile = await profile_query(s, "梅雨 台風 雨")
        assert profile.stats.chunks == len(remaining)
        for term in profile.terms:
            assert profile.stats.df.get(term, 0) == sum(term in c for c in remaining), term


async def test_a_crowd_of_other_users_chunks_neither_leaks_nor_starves(
    app: FastAPI, session: AsyncSession
) -> None:
    crowd_owner = await create_user(session)
    me = await create_user(session)
    paragraph = "Refund refund refund: the refund policy, refund desk and refund form. " * 5
    async with session_scope(app.state.sessionmaker) as s:
        crowd = await index_document(
            s,
            owner_id=crowd_owner.id,
            shared=False,
            filename="crowd.txt",
            content_type="text/plain",
            encoding="utf-8",
            text="\n\n".join(f"{paragraph} Part {i}." for i in range(60)),
        )
        mine = await index_document(
            s,
            owner_id=me.id,
            shared=False,
            filename="mine.txt",
            content_type="text/plain",
            encoding="utf-8",
            text="A refund is possible within 14 days of the purchase.",
        )
    assert crowd.document.chunk_count > 2 * CANDIDATES  # more than the first pool holds
    async with app.state.sessionmaker() as s:
        retrieval = await service.retrieve(s, user_id=me.id, query="refund policy", top_k=5)
    assert [c.document_id for c in retrieval.chunks] == [mine.document.id]
