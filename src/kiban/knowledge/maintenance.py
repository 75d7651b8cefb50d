"""Rebuilding what derives from the stored text: BM25 terms after an analyzer change, vectors
after an embedding-model change (``kiban knowledge reembed``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kiban.core.db import session_scope
from kiban.knowledge.analyzer import analyze
from kiban.knowledge.embedding import Embedder
from kiban.knowledge.indexing import title_of
from kiban.knowledge.queue import embed_pending
from kiban.knowledge.search import update_term_stats
from kiban.knowledge.vectors import count_pending, note_deleted_scope
from kiban.models.knowledge import (
    ChunkVector,
    Document,
    DocumentChunk,
    KnowledgeTerm,
    KnowledgeVectorVersion,
)

# The PostgreSQL index rebuilt from the chunks' terms, as migration 0004's trigger builds a row.
_POSTGRES_REBUILD = [
    "DELETE FROM knowledge_fts",
    """
    INSERT INTO knowledge_fts (chunk_id, scope, term_count, tsv)
    SELECT c.id, c.scope, c.term_count,
           COALESCE((
               SELECT string_agg(quote_literal(t) || ':' || least(i, 16383), ' ')
               FROM unnest(string_to_array(c.terms, ' ')) WITH ORDINALITY AS x(t, i)
               WHERE t <> ''
           ), '')::tsvector
    FROM document_chunks AS c
    """,
]


def _analyze_chunks(rows: list[tuple[int, str, str]]) -> list[tuple[int, list[str]]]:
    titles: dict[str, list[str]] = {}
    result = []
    for chunk_id, filename, body in rows:
        if filename not in titles:
            titles[filename] = analyze(title_of(filename))
        result.append((chunk_id, titles[filename] + analyze(body)))
    return result


async def reindex(session: AsyncSession) -> int:
    """Analyze every chunk again and rebuild the full-text index and the term statistics from
    them, in this transaction (after an analyzer change); how many chunks."""
    rows = (
        await session.execute(
            select(DocumentChunk.id, Document.filename, DocumentChunk.text).join(
                Document, Document.id == DocumentChunk.document_id
            )
        )
    ).all()
    analyzed = await asyncio.to_thread(
        _analyze_chunks, [(int(r.id), str(r.filename), str(r.text)) for r in rows]
    )
    for chunk_id, terms in analyzed:
        await session.execute(
            update(DocumentChunk)
            .where(DocumentChunk.id == chunk_id)
            .values(terms=" ".join(terms), term_count=len(terms))
        )
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(text("INSERT INTO knowledge_fts(knowledge_fts) VALUES ('rebuild')"))
    else:
        for statement in _POSTGRES_REBUILD:
            await session.execute(text(statement))
    await session.execute(delete(KnowledgeTerm))
    await update_term_stats(session, [terms for _, terms in analyzed])
    await session.flush()
    return len(analyzed)


async def drop_other_models(session: AsyncSession, model: str) -> int:
    """Delete the vectors of every model but `model`; how many."""
    scopes = (
        await session.execute(
            select(KnowledgeVectorVersion.scope).where(KnowledgeVectorVersion.model != model)
        )
    ).scalars()
    for scope in set(scopes):
        await note_deleted_scope(session, scope)
    result = await session.execute(delete(ChunkVector).where(ChunkVector.model != model))
    return int(getattr(result, "rowcount", 0) or 0)


async def reembed(
    sessionmaker: async_sessionmaker[AsyncSession],
    embedder: Embedder,
    *,
    force: bool = False,
    keep_other_models: bool = False,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Give every chunk a vector of the embedder's model (all of them again with `force`), then
    drop other models' vectors unless kept; (chunks embedded, vectors dropped)."""
    if force:
        async with session_scope(sessionmaker) as session:
            for scope in set(
                (
                    await session.execute(
                        select(ChunkVector.scope).where(ChunkVector.model == embedder.model)
                    )
                ).scalars()
            ):
                await note_deleted_scope(session, scope)
            await session.execute(delete(ChunkVector).where(ChunkVector.model == embedder.model))
    async with sessionmaker() as session:
        total = await count_pending(session, embedder.model)
    done = 0
    while True:
        stored = await embed_pending(sessionmaker, embedder, batch_size=batch_size, limit=256)
        if stored == 0:
            break
        done += stored
        if progress is not None:
            progress(done, total)
    dropped = 0
    if not keep_other_models:
        async with session_scope(sessionmaker) as session:
            dropped = await drop_other_models(session, embedder.model)
    return done, dropped
