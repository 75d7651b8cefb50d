"""Knowledge: documents, the Japanese-aware analyzer, full-text retrieval and the relevance gate.

What other domains use: ``retrieve`` (the ranked, gated chunks for a question) and
``RetrievedChunk``; ``start`` warms the analyzer when the app starts and gives the relevance gate
(``GateConfig``) the app passes to ``retrieve``.
"""

from kiban.knowledge.gate import GateConfig
from kiban.knowledge.service import RetrievedChunk, retrieve, start

__all__ = ["GateConfig", "RetrievedChunk", "retrieve", "start"]
