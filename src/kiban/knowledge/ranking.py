"""Ranking: BM25 and dense candidates, re-ranked with the "all terms present" signal and fused.

The AND-then-OR idea is kept as a ranking signal, not a filter: BM25 over the OR of the query's
terms finds candidates; a chunk's share of the query's informative weight (idf mass) it holds
then lifts chunks that hold every informative term above those that merely repeat one of them.
With an embedder, the nearest chunks by cosine are candidates too, and every candidate (from
either list) gets both its lexical features and its cosine, so the fused order and the relevance
gate see both signals for each chunk (``fusion.py``).
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.knowledge.analyzer import analyze, is_japanese
from kiban.knowledge.embedding import Vectors
from kiban.knowledge.search import K1, B, CorpusStats, bm25_candidates, corpus_stats
from kiban.knowledge.vectors import unpack
from kiban.models.knowledge import SHARED_SCOPE, ChunkVector, Document, DocumentChunk, owner_scope

# How many BM25 candidates are re-ranked (at least top_k).
CANDIDATES = 20
# A term in more than this share of the chunks (and more than COMMON_MIN_DF of them) does not
# generate candidates while the query has rarer terms: its posting list is long and its idf small.
# It still counts in every candidate's score. This bounds query time on large corpora.
COMMON_SHARE = 0.02
COMMON_MIN_DF = 200
# Weight of the coverage signal in the ranking score: bm25 * (1 + COVERAGE_WEIGHT * coverage).
COVERAGE_WEIGHT = 1.0


@dataclass(frozen=True)
class QueryProfile:
    """What the query asks for, in corpus terms."""

    terms: list[str]  # distinct analyzed terms
    idf: dict[str, float]  # informativeness of each term (CorpusStats.gate_idf)
    stats: CorpusStats
    japanese: bool = False  # the query is written (at least partly) in Japanese

    @property
    def weight(self) -> float:
        """The query's idf mass: BM25 of a chunk holding each term once, at average length."""
        return sum(self.idf.values())

    @property
    def unknown_share(self) -> float:
        """Share of the query's weight in terms the corpus has never seen."""
        total = self.weight
        unknown = sum(w for t, w in self.idf.items() if self.stats.df.get(t, 0) == 0)
        return unknown / total if total else 1.0


@dataclass(frozen=True)
class Candidate:
    chunk_id: int
    document_id: uuid.UUID
    filename: str
    text: str
    start_offset: int
    end_offset: int
    bm25: float  # the index's BM25 score
    coverage: float  # share of the query's idf mass this chunk holds
    strength: float  # BM25 with the gate's idf, relative to the query's own weight (~0..1)
    rank_score: float  # the lexical order: bm25 * (1 + coverage)
    cosine: float | None = None  # the chunk's vector against the query's (None: not embedded)
    lexical_rank: int | None = None  # 0-based position among the lexical candidates
    dense_rank: int | None = None  # 0-based position among the nearest vectors


def candidate_terms(profile: QueryProfile) -> list[str]:
    """The query terms that look candidates up in the index (all but the very common ones)."""
    stats = profile.stats
    known = [t for t in profile.terms if stats.df.get(t, 0) > 0]
    cap = max(COMMON_MIN_DF, COMMON_SHARE * stats.chunks)
    rare = [t for t in known if stats.df[t] <= cap]
    if rare or not known:
        return rare
    return [min(known, key=lambda t: stats.df[t])]


def visible_scopes(user_id: uuid.UUID) -> list[str]:
    """The index scopes a user may retrieve from: their own documents and shared ones."""
    return [owner_scope(user_id), SHARED_SCOPE]


async def profile_query(session: AsyncSession, query: str) -> QueryProfile:
    """The query's distinct terms and their corpus statistics."""
    distinct = list(dict.fromkeys(analyze(query)))
    stats = await corpus_stats(session, distinct)
    idf = {t: stats.gate_idf(t) for t in distinct}
    return QueryProfile(distinct, idf, stats, is_japanese(query))


async def lexical_candidates(
    session: AsyncSession, profile: QueryProfile, scopes: list[str], limit: int
) -> list[tuple[int, float]]:
    """BM25's best `limit` (chunk id, score) for the query among `scopes`."""
    if not profile.terms:
        return []
    return await bm25_candidates(session, candidate_terms(profile), scopes, profile.stats, limit)


async def rank(
    session: AsyncSession,
    profile: QueryProfile,
    scopes: list[str],
    top_k: int,
    *,
    candidates: int = CANDIDATES,
    coverage_weight: float = COVERAGE_WEIGHT,
    dense: list[tuple[int, float]] | None = None,
    query_vector: Vectors | None = None,
    model: str | None = None,
    hits: list[tuple[int, float]] | None = None,
) -> list[Candidate]:
    """The best `top_k` chunks in `scopes` for the query by the lexical order, best first.

    With `dense` (chunk id, cosine) candidates, the query's vector and the embedding `model`,
    every candidate of either kind is returned (not cut to `top_k`), each with its cosine, for
    the caller to fuse. `hits` are the BM25 candidates when the caller already has them.
    """
    if hits is None:
        hits = await lexical_candidates(session, profile, scopes, max(top_k, candidates))
    dense = dense or []
    wanted = list(dict.fromkeys([chunk_id for chunk_id, _ in hits] + [c for c, _ in dense]))
    if not wanted:
        return []
    columns = [
        DocumentChunk.id,
        DocumentChunk.document_id,
        Document.filename,
        DocumentChunk.text,
        DocumentChunk.terms,
        DocumentChunk.start_offset,
        DocumentChunk.end_offset,
    ]
    statement = select(*columns).join(Document, Document.id == DocumentChunk.document_id)
    if query_vector is not None and model is not None:
        statement = select(*columns, ChunkVector.vector).join(
            Document, Document.id == DocumentChunk.document_id
        )
        statement = statement.outerjoin(
            ChunkVector, (ChunkVector.chunk_id == DocumentChunk.id) & (ChunkVector.model == model)
        )
    rows = await session.execute(statement.where(DocumentChunk.id.in_(wanted)))
    by_id = {row.id: row for row in rows}
    weight = profile.weight or 1.0
    lexical_rank = {chunk_id: i for i, (chunk_id, _) in enumerate(hits)}
    dense_rank = {chunk_id: i for i, (chunk_id, _) in enumerate(dense)}
    dense_cosine = dict(dense)
    ranked: list[Candidate] = []
    stats = profile.stats
    for chunk_id in wanted:
        row = by_id.get(chunk_id)
        if row is None:  # deleted between the two statements
            continue
        counts = Counter(row.terms.split())
        coverage = sum(w for t, w in profile.idf.items() if t in counts) / weight
        norm = K1 * (1.0 - B + B * sum(counts.values()) / stats.avgdl)
        # The full query's BM25 (the index scored only the candidate terms), same formula.
        score = sum(
            stats.idf(t) * counts[t] * (K1 + 1.0) / (counts[t] + norm)
            for t in profile.terms
            if t in counts
        )
        strength = (
            sum(
                w * counts[t] * (K1 + 1.0) / (counts[t] + norm)
                for t, w in profile.idf.items()
                if t in counts
            )
            / weight
        )
        cosine = dense_cosine.get(chunk_id)
        if cosine is None and query_vector is not None and getattr(row, "vector", None):
            vector = unpack(row.vector)
            if vector.shape == query_vector.shape:
                cosine = float(vector @ query_vector)
        ranked.append(
            Candidate(
                chunk_id=chunk_id,
                document_id=row.document_id,
                filename=row.filename,
                text=row.text,
                start_offset=row.start_offset,
                end_offset=row.end_offset,
                bm25=score,
                coverage=coverage,
                strength=strength,
                rank_score=score * (1.0 + coverage_weight * coverage),
                cosine=cosine,
                lexical_rank=lexical_rank.get(chunk_id),
                dense_rank=dense_rank.get(chunk_id),
            )
        )
    ranked.sort(key=lambda c: (-c.rank_score, c.chunk_id))
    if dense:
        return ranked
    return ranked[:top_k]
