"""Knowledge: documents, the Japanese-aware analyzer, full-text retrieval and the relevance gate.

What other domains use: ``retrieve`` (the ranked, gated chunks for a question) and
``RetrievedChunk``; ``start`` warms the analyzer and sets the gate when the app starts.
"""

from kiban.knowledge.service import RetrievedChunk, retrieve, start

__all__ = ["RetrievedChunk", "retrieve", "start"]
