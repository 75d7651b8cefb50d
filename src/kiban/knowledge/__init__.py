"""Knowledge: documents, the Japanese-aware analyzer, hybrid retrieval and the relevance gate.

What other domains use: ``retrieve`` (the ranked, gated chunks for a question) and
``RetrievedChunk``; ``start`` warms the analyzer and the embedder when the app starts, starts the
embedding queue and gives the ``Retriever`` the app passes to ``retrieve``; ``Embedder`` and
``EmbeddingUnavailable`` for ``/v1/embeddings``; ``forget_owner`` removes a user's documents.
"""

from kiban.knowledge.documents import forget_owner
from kiban.knowledge.embedding import Embedder, EmbeddingUnavailable
from kiban.knowledge.gate import GateConfig
from kiban.knowledge.service import RetrievedChunk, Retriever, retrieve, start

__all__ = [
    "Embedder",
    "EmbeddingUnavailable",
    "GateConfig",
    "RetrievedChunk",
    "Retriever",
    "forget_owner",
    "retrieve",
    "start",
]
