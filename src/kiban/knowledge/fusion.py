"""Hybrid ranking and its relevance gate: one score from the lexical and the dense signal.

Each candidate (from BM25 or from the nearest vectors) has two relevance signals on 0..1:

- lexical: the BM25 gate's ``0.5 coverage + 0.5 strength`` (``gate.py``), which depends on the
  query's words and the chunk's, not on how many chunks the corpus holds;
- dense: the cosine of the chunk's vector with the question's, mapped linearly from
  ``cosine_floor`` (0) to ``cosine_ceiling`` (1) and clipped. A cosine is a property of the
  pair alone, so it too is the same in a small corpus and in a large one.

``score = lexical_weight * lexical + (1 - lexical_weight) * dense`` orders the candidates and is
the gate's score: a chunk is relevant when it reaches the threshold of the question's script.
A chunk without a vector yet (still in the embedding queue) is scored by the lexical gate alone
against the BM25 thresholds, so an upload is searchable before it is embedded.

The constants were calibrated on half of JSQuAD and XQuAD-en (bench/calibrate_hybrid.py) and
checked on the other half, over the corpus alone and with four times as many unrelated
paragraphs (docs/benchmarks.md, decision 0026).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kiban.knowledge.gate import GateConfig
from kiban.knowledge.ranking import Candidate, QueryProfile

# Calibrated (bench/calibrate_hybrid.py); see the module docstring.
DEFAULT_LEXICAL_WEIGHT = 0.5
DEFAULT_COSINE_FLOOR = 0.78
DEFAULT_COSINE_CEILING = 0.90
DEFAULT_HYBRID_THRESHOLD = 0.41
DEFAULT_HYBRID_THRESHOLD_JAPANESE = 0.61


@dataclass(frozen=True)
class HybridConfig:
    lexical_weight: float = DEFAULT_LEXICAL_WEIGHT
    cosine_floor: float = DEFAULT_COSINE_FLOOR
    cosine_ceiling: float = DEFAULT_COSINE_CEILING
    threshold: float = DEFAULT_HYBRID_THRESHOLD
    threshold_japanese: float = DEFAULT_HYBRID_THRESHOLD_JAPANESE

    def threshold_for(self, profile: QueryProfile) -> float:
        return self.threshold_japanese if profile.japanese else self.threshold

    def dense(self, cosine: float) -> float:
        """The cosine on the gate's 0..1 scale."""
        span = max(self.cosine_ceiling - self.cosine_floor, 1e-6)
        return min(1.0, max(0.0, (cosine - self.cosine_floor) / span))

    def score(self, profile: QueryProfile, candidate: Candidate, lexical_gate: GateConfig) -> float:
        """The fused relevance of a candidate with a vector, 0..1."""
        lexical = lexical_gate.relevance(profile, candidate) if profile.terms else 0.0
        if candidate.cosine is None:
            return lexical
        w = self.lexical_weight
        return w * lexical + (1.0 - w) * self.dense(candidate.cosine)


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    score: float
    relevant: bool


def fuse(
    profile: QueryProfile,
    candidates: Sequence[Candidate],
    lexical_gate: GateConfig,
    hybrid: HybridConfig,
) -> list[Scored]:
    """The candidates in fused order, each with its score and the gate's decision."""
    threshold = hybrid.threshold_for(profile)
    lexical_threshold = lexical_gate.threshold_for(profile)
    scored = []
    for c in candidates:
        value = hybrid.score(profile, c, lexical_gate)
        relevant = value >= (threshold if c.cosine is not None else lexical_threshold)
        scored.append(Scored(c, value, relevant))
    scored.sort(key=lambda s: (-s.score, s.candidate.chunk_id))
    return scored
