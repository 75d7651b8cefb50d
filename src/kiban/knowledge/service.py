"""Knowledge service: what the gateway asks of retrieval.

CONTRACT (used by the gateway pipeline; keep the signatures): ``retrieve`` returns the ranked chunks
the user may see, each marked whether it passes the relevance threshold.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from kiban.knowledge.analyzer import analyzer
from kiban.knowledge.gate import GateConfig
from kiban.knowledge.ranking import profile_query, rank, visible_scopes
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


async def start(settings: Settings) -> GateConfig:
    """At app startup: the Sudachi dictionary loaded off the loop; the gate the app will use."""
    await asyncio.to_thread(analyzer().warm_up)
    return gate_from_settings(settings)


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The start of a chunk, on one line, cut at `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


async def retrieve(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    query: str,
    top_k: int = 5,
    gate: GateConfig | None = None,
) -> Retrieval:
    """The chunks relevant to `query` among the user's and shared documents (ranked).

    ``gate`` is the app's (``app.state.knowledge_gate``, from the settings); scripts and
    benchmarks that pass none get the calibrated default.
    """
    gate = gate or default_gate()
    top_k = max(1, min(top_k, MAX_TOP_K))
    profile = await profile_query(session, query)
    threshold = gate.threshold_for(profile)
    if not profile.terms:
        return Retrieval(threshold=threshold)
    ranked = await rank(session, profile, visible_scopes(user_id), top_k)
    chunks = []
    for candidate in ranked:
        relevance = gate.relevance(profile, candidate)
        chunks.append(
            RetrievedChunk(
                document_id=candidate.document_id,
                filename=candidate.filename,
                chunk_id=candidate.chunk_id,
                score=round(relevance, 4),
                snippet=snippet(candidate.text),
                text=candidate.text,
                relevant=relevance >= threshold,
            )
        )
    return Retrieval(chunks=chunks, threshold=threshold)
