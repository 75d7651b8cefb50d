"""Knowledge service: what the gateway asks of retrieval.

CONTRACT (used by the gateway pipeline; keep the signatures): ``retrieve`` returns the ranked chunks
the user may see, each marked whether it passes the relevance threshold.

``Retriever`` is the app's retrieval state, made once at start-up (``start``) and kept on
``app.state.retriever``: the BM25 gate, the embedder with its fused gate, this process's cache of
the shared vectors, and the embedding queue. Without an embedder (``KIBAN_EMBEDDER=none``) or
without a retriever (scripts), retrieval is BM25 with its gate alone.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kiban.knowledge.analyzer import analyzer
from kiban.knowledge.embedding import Embedder, embedder_from_settings
from kiban.knowledge.fusion import HybridConfig, fuse
from kiban.knowledge.gate import GateConfig
from kiban.knowledge.queue import EmbeddingQueue
from kiban.knowledge.ranking import (
    CANDIDATES,
    Candidate,
    QueryProfile,
    lexical_candidates,
    profile_query,
    rank,
    visible_scopes,
)
from kiban.knowledge.vectors import SharedVectors, dense_candidates
from kiban.settings import Settings

SNIPPET_CHARS = 200
MAX_TOP_K = 50


@dataclass(frozen=True)
class RetrievedChunk:
    document_id: uuid.UUID
    filename: str
    chunk_id: int
    score: float
    snippet: str
    text: str
    relevant: bool


@dataclass(frozen=True)
class Retrieval:
    chunks: list[RetrievedChunk] = field(default_factory=list)
    threshold: float = 0.0

    @property
    def relevant(self) -> list[RetrievedChunk]:
        return [c for c in self.chunks if c.relevant]


def default_gate() -> GateConfig:
    """The calibrated relevance gate."""
    return GateConfig()


def gate_from_settings(settings: Settings) -> GateConfig:
    """The relevance gate the settings configure (KIBAN_KNOWLEDGE_RELEVANCE_THRESHOLD*)."""
    return GateConfig(
        threshold=settings.knowledge_relevance_threshold,
        threshold_japanese=settings.knowledge_relevance_threshold_japanese,
    )


def hybrid_from_settings(settings: Settings) -> HybridConfig:
    """The fused gate the settings configure (KIBAN_KNOWLEDGE_HYBRID_THRESHOLD*)."""
    return HybridConfig(
        threshold=settings.knowledge_hybrid_threshold,
        threshold_japanese=settings.knowledge_hybrid_threshold_japanese,
    )


# How many nearest vectors join the BM25 candidates.
DENSE_CANDIDATES = 20


@dataclass
class Retriever:
    """What retrieval needs beyond the database, made once per process."""

    gate: GateConfig = field(default_factory=GateConfig)
    embedder: Embedder | None = None
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    shared_vectors: SharedVectors = field(default_factory=SharedVectors)
    queue: EmbeddingQueue | None = None

    def notify(self) -> None:
        """New chunks were committed: the queue embeds them now."""
        if self.queue is not None:
            self.queue.notify()

    async def close(self) -> None:
        if self.queue is not None:
            await self.queue.close()
        if self.embedder is not None:
            await self.embedder.aclose()


def retriever_from_settings(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession] | None = None
) -> Retriever:
    """The retriever the settings configure; with a sessionmaker, its embedding queue too."""
    embedder = embedder_from_settings(settings)
    queue = None
    if embedder is not None and sessionmaker is not None:
        queue = EmbeddingQueue(
            sessionmaker,
            embedder,
            batch_size=settings.embedding_batch_size,
            poll_seconds=settings.embedding_poll_seconds,
        )
    return Retriever(
        gate=gate_from_settings(settings),
        embedder=embedder,
        hybrid=hybrid_from_settings(settings),
        queue=queue,
    )


async def start(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession] | None = None
) -> Retriever:
    """At app startup: the Sudachi dictionary and the embedder loaded off the loop, and the
    embedding queue started (it drains what start-up finds without a vector first)."""
    await asyncio.to_thread(analyzer().warm_up)
    retriever = retriever_from_settings(settings, sessionmaker)
    if retriever.embedder is not None:
        load = getattr(retriever.embedder, "load", None)
        if load is not None:
            await asyncio.to_thread(load)
    if retriever.queue is not None:
        retriever.queue.start()
    return retriever


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The start of a chunk, on one line, cut at `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


async def candidates(
    session: AsyncSession,
    retriever: Retriever | None,
    user_id: uuid.UUID,
    query: str,
    top_k: int,
) -> tuple[QueryProfile, list[Candidate]]:
    """The query's profile and its candidates: BM25's and, with an embedder, the nearest
    vectors', each with both signals (lexical order; cut to `top_k` only without vectors)."""
    scopes = visible_scopes(user_id)
    embedder = retriever.embedder if retriever else None
    if retriever is None or embedder is None:
        profile = await profile_query(session, query)
        return profile, await rank(session, profile, scopes, top_k) if profile.terms else []
    # The question's embedding (a worker thread) runs while the analyzer and BM25 work.
    embedding = asyncio.ensure_future(embedder.embed([query], "query"))
    try:
        profile = await profile_query(session, query)
        hits = await lexical_candidates(session, profile, scopes, max(top_k, CANDIDATES))
        vector = (await embedding)[0]
    finally:
        if not embedding.done():
            embedding.cancel()
    dense = await dense_candidates(
        session,
        retriever.shared_vectors,
        embedder.model,
        vector,
        scopes,
        max(top_k, DENSE_CANDIDATES),
    )
    ranked = await rank(
        session,
        profile,
        scopes,
        top_k,
        dense=dense,
        query_vector=vector,
        model=embedder.model,
        hits=hits,
    )
    return profile, ranked


async def retrieve(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    query: str,
    top_k: int = 5,
    gate: GateConfig | None = None,
    retriever: Retriever | None = None,
) -> Retrieval:
    """The chunks relevant to `query` among the user's and shared documents (ranked).

    ``retriever`` is the app's (``app.state.retriever``): hybrid when it has an embedder.
    Without one, BM25 with ``gate`` (scripts and benchmarks that pass neither get the
    calibrated default).
    """
    top_k = max(1, min(top_k, MAX_TOP_K))
    if retriever is None:
        retriever = Retriever(gate=gate or default_gate())
    profile, ranked = await candidates(session, retriever, user_id, query, top_k)
    lexical_gate = retriever.gate
    if retriever.embedder is None:
        threshold = lexical_gate.threshold_for(profile)
        scores = [(c, lexical_gate.relevance(profile, c)) for c in ranked[:top_k]]
        return Retrieval(
            chunks=[_chunk(c, score, score >= threshold) for c, score in scores],
            threshold=threshold,
        )
    fused = fuse(profile, ranked, lexical_gate, retriever.hybrid)[:top_k]
    return Retrieval(
        chunks=[_chunk(s.candidate, s.score, s.relevant) for s in fused],
        threshold=retriever.hybrid.threshold_for(profile),
    )


def _chunk(candidate: Candidate, score: float, relevant: bool) -> RetrievedChunk:
    return RetrievedChunk(
        document_id=candidate.document_id,
        filename=candidate.filename,
        chunk_id=candidate.chunk_id,
        score=round(score, 4),
        snippet=snippet(candidate.text),
        text=candidate.text,
        relevant=relevant,
    )
