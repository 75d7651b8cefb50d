"""Knowledge service: what the gateway asks of retrieval.

CONTRACT (used by the gateway pipeline; keep the signatures): ``retrieve`` returns the ranked chunks
the user may see, each marked whether it passes the relevance threshold.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession


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


async def retrieve(
    session: AsyncSession, *, user_id: uuid.UUID, query: str, top_k: int = 5
) -> Retrieval:
    """The chunks relevant to `query` among the user's and shared documents (ranked)."""
    # Placeholder until the knowledge issue lands: no documents, so nothing is relevant.
    return Retrieval()
