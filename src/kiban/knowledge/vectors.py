"""Chunk vectors: stored per chunk and model, searched exactly with numpy.

Visibility stays in SQL: the caller's private vectors are selected with ``scope = :scope``, and
the shared ones come from ``SharedVectors``, a per-process cache of the rows selected with
``scope = 'shared'``. The cache checks one row of ``knowledge_vector_versions`` per search: the
same version means current; more writes but no deletes means only rows with a larger id are new
(writers bump the version row *before* inserting, so ids are committed in the order of the
row's lock and none can appear behind one already seen); a delete means a full reload.

Search is exact: one matrix product over the visible vectors (100,000 x 384 float32 is 150 MB and
about 10 ms on two cores). pgvector or sqlite-vec could replace it as accelerators; neither is
needed for exactness, and neither is required (docs/decisions/0025).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.knowledge.embedding import Vectors
from kiban.models.knowledge import (
    SHARED_SCOPE,
    ChunkVector,
    DocumentChunk,
    KnowledgeVectorVersion,
)


def pack(vector: Vectors) -> bytes:
    """A vector as stored: little-endian float32 bytes."""
    return np.asarray(vector, dtype="<f4").tobytes()


def unpack(blob: bytes) -> Vectors:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def _insert(session: AsyncSession):  # type: ignore[no-untyped-def]
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def bump_versions(
    session: AsyncSession, model: str, scopes: Sequence[str], *, deletion: bool = False
) -> None:
    """Count a write (or a delete) of `model`'s vectors in `scopes`, locking their rows."""
    insert = _insert(session)
    for scope in sorted(set(scopes)):  # one lock order for every writer
        statement = insert(KnowledgeVectorVersion).values(
            model=model, scope=scope, version=1, deletions=int(deletion)
        )
        statement = statement.on_conflict_do_update(
            index_elements=[KnowledgeVectorVersion.model, KnowledgeVectorVersion.scope],
            set_={
                "version": KnowledgeVectorVersion.version + 1,
                "deletions": KnowledgeVectorVersion.deletions + int(deletion),
            },
        )
        await session.execute(statement)


async def note_deleted_scope(session: AsyncSession, scope: str) -> None:
    """Before a scope's chunks are deleted (their vectors go with them): every model's caches
    of that scope must reload."""
    await session.execute(
        update(KnowledgeVectorVersion)
        .where(KnowledgeVectorVersion.scope == scope)
        .values(
            version=KnowledgeVectorVersion.version + 1,
            deletions=KnowledgeVectorVersion.deletions + 1,
        )
    )


async def store_vectors(
    session: AsyncSession, model: str, rows: Sequence[tuple[int, str, Vectors]]
) -> None:
    """Store (chunk id, scope, vector) rows of `model`; a chunk that already has one keeps it."""
    if not rows:
        return
    await bump_versions(session, model, [scope for _, scope, _ in rows])
    insert = _insert(session)
    statement = insert(ChunkVector).on_conflict_do_nothing(
        index_elements=[ChunkVector.chunk_id, ChunkVector.model]
    )
    await session.execute(
        statement,
        [
            {
                "chunk_id": chunk_id,
                "model": model,
                "scope": scope,
                "dimensions": int(vector.shape[0]),
                "vector": pack(vector),
            }
            for chunk_id, scope, vector in rows
        ],
    )


@dataclass(frozen=True)
class PendingChunk:
    id: int
    scope: str
    text: str
    filename: str


async def pending_chunks(
    session: AsyncSession, model: str, limit: int, after_id: int = 0
) -> list[PendingChunk]:
    """Chunks without a vector of `model` (the embedding queue), oldest first."""
    from kiban.models.knowledge import Document

    rows = await session.execute(
        select(DocumentChunk.id, DocumentChunk.scope, DocumentChunk.text, Document.filename)
        .join(Document, Document.id == DocumentChunk.document_id)
        .outerjoin(
            ChunkVector,
            (ChunkVector.chunk_id == DocumentChunk.id) & (ChunkVector.model == model),
        )
        .where(ChunkVector.id.is_(None), DocumentChunk.id > after_id)
        .order_by(DocumentChunk.id)
        .limit(limit)
    )
    return [PendingChunk(int(r.id), r.scope, r.text, r.filename) for r in rows]


async def count_pending(session: AsyncSession, model: str) -> int:
    """How many chunks wait for a vector of `model`."""
    embedded = select(ChunkVector.chunk_id).where(ChunkVector.model == model)
    return int(
        (
            await session.execute(
                select(func.count()).where(DocumentChunk.id.not_in(embedded.scalar_subquery()))
            )
        ).scalar_one()
    )


async def embedded_counts(
    session: AsyncSession, model: str, document_ids: Sequence[object]
) -> dict[object, int]:
    """How many chunks of each document have a vector of `model`."""
    if not document_ids:
        return {}
    rows = await session.execute(
        select(DocumentChunk.document_id, func.count())
        .join(ChunkVector, ChunkVector.chunk_id == DocumentChunk.id)
        .where(ChunkVector.model == model, DocumentChunk.document_id.in_(document_ids))
        .group_by(DocumentChunk.document_id)
    )
    return {document_id: int(n) for document_id, n in rows}


@dataclass
class _Matrix:
    """A growable (ids, vectors) pair: appends amortize their copies by doubling."""

    dimensions: int = 0
    count: int = 0
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    data: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    def append(self, ids: Sequence[int], vectors: Vectors) -> None:
        if not len(ids):
            return
        if self.dimensions == 0:
            self.dimensions = int(vectors.shape[1])
        needed = self.count + len(ids)
        if needed > len(self.ids):
            capacity = max(needed, 2 * len(self.ids), 1024)
            ids_buffer = np.zeros(capacity, dtype=np.int64)
            data_buffer = np.zeros((capacity, self.dimensions), dtype=np.float32)
            if self.count:
                ids_buffer[: self.count] = self.ids[: self.count]
                data_buffer[: self.count] = self.data[: self.count]
            self.ids, self.data = ids_buffer, data_buffer
        self.ids[self.count : needed] = ids
        self.data[self.count : needed] = vectors
        self.count = needed

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ids[: self.count], self.data[: self.count]


@dataclass
class _Cached:
    version: int = -1
    deletions: int = -1
    last_id: int = 0
    matrix: _Matrix = field(default_factory=_Matrix)


class SharedVectors:
    """This process's copy of the shared documents' vectors, per model, kept current."""

    def __init__(self) -> None:
        self._cached: dict[str, _Cached] = {}
        self._lock = asyncio.Lock()

    async def get(self, session: AsyncSession, model: str) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, vectors) of every shared chunk embedded by `model`."""
        row = (
            await session.execute(
                select(KnowledgeVectorVersion.version, KnowledgeVectorVersion.deletions).where(
                    KnowledgeVectorVersion.model == model,
                    KnowledgeVectorVersion.scope == SHARED_SCOPE,
                )
            )
        ).one_or_none()
        version, deletions = (int(row[0]), int(row[1])) if row else (0, 0)
        cached = self._cached.get(model)
        if cached is not None and cached.version == version:
            return cached.matrix.view()
        async with self._lock:
            cached = self._cached.get(model)
            if cached is None or cached.deletions != deletions:
                cached = _Cached()
            if cached.version != version:
                await self._load(session, model, cached)
                cached.version, cached.deletions = version, deletions
                self._cached[model] = cached
            return cached.matrix.view()

    async def _load(self, session: AsyncSession, model: str, cached: _Cached) -> None:
        while True:
            rows = (
                await session.execute(
                    select(ChunkVector.id, ChunkVector.chunk_id, ChunkVector.vector)
                    .where(
                        ChunkVector.model == model,
                        ChunkVector.scope == SHARED_SCOPE,
                        ChunkVector.id > cached.last_id,
                    )
                    .order_by(ChunkVector.id)
                    .limit(20_000)
                )
            ).all()
            if not rows:
                return
            vectors = np.vstack([unpack(r.vector) for r in rows])
            cached.matrix.append([int(r.chunk_id) for r in rows], vectors)
            cached.last_id = int(rows[-1].id)

    def clear(self) -> None:
        self._cached.clear()


async def private_vectors(
    session: AsyncSession, model: str, scope: str
) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids, vectors) of one private scope, read for this search."""
    rows = (
        await session.execute(
            select(ChunkVector.chunk_id, ChunkVector.vector).where(
                ChunkVector.model == model, ChunkVector.scope == scope
            )
        )
    ).all()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return (
        np.array([int(r.chunk_id) for r in rows], dtype=np.int64),
        np.vstack([unpack(r.vector) for r in rows]),
    )


def top_matches(
    ids: np.ndarray, matrix: np.ndarray, query: Vectors, limit: int
) -> list[tuple[int, float]]:
    """The `limit` best (chunk id, cosine) by exact dot product, best first."""
    if not len(ids) or matrix.shape[1] != query.shape[0]:
        return []
    scores = matrix @ query
    if len(scores) > limit:
        best = np.argpartition(-scores, limit)[:limit]
    else:
        best = np.arange(len(scores))
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(int(ids[i]), float(scores[i])) for i in best]


async def dense_candidates(
    session: AsyncSession,
    shared: SharedVectors,
    model: str,
    query: Vectors,
    scopes: Sequence[str],
    limit: int,
) -> list[tuple[int, float]]:
    """The best `limit` (chunk id, cosine) among the vectors of `model` in `scopes`."""
    found: list[tuple[int, float]] = []
    for scope in scopes:
        if scope == SHARED_SCOPE:
            ids, matrix = await shared.get(session, model)
        else:
            ids, matrix = await private_vectors(session, model, scope)
        found += top_matches(ids, matrix, query, limit)
    found.sort(key=lambda pair: (-pair[1], pair[0]))
    return found[:limit]
