"""The relevance gate: does a retrieved chunk actually answer the question, or merely share words?

A raw BM25 score is a poor judge (its scale depends on the query's length and on how rare its
words are), so the gate looks at what makes a chunk an answer, each on a 0..1 scale:

- coverage: the share of the query's informative weight (idf mass, where a term the corpus has
  never seen weighs the most) that the chunk holds. A question about something the corpus does
  not know carries terms no chunk holds.
- strength: the chunk's BM25 score (with the gate's idf) relative to the query's own attainable
  score (the score of a chunk holding each query term once, at average length).

The chunk is relevant when ``coverage * w + min(strength, 1) * (1 - w)`` reaches the threshold.
The threshold depends on the query's script: a Japanese question analyzes into a few content words
(particles, auxiliaries and question words are dropped), an English one into more, with more
paraphrase, so the same share means more in Japanese. Weight and thresholds were calibrated on one
half of the evaluation data and checked on the other (docs/benchmarks.md, bench/retrieval_eval.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kiban.knowledge.ranking import Candidate, QueryProfile

# Calibrated on half A of JSQuAD and XQuAD-en (95% of in-corpus questions answered).
DEFAULT_THRESHOLD = 0.42
DEFAULT_THRESHOLD_JAPANESE = 0.58
DEFAULT_COVERAGE_WEIGHT = 0.5


@dataclass(frozen=True)
class GateConfig:
    threshold: float = DEFAULT_THRESHOLD
    threshold_japanese: float = DEFAULT_THRESHOLD_JAPANESE
    coverage_weight: float = DEFAULT_COVERAGE_WEIGHT

    def threshold_for(self, profile: QueryProfile) -> float:
        """The threshold for this query (by its script)."""
        return self.threshold_japanese if profile.japanese else self.threshold

    def relevance(self, profile: QueryProfile, candidate: Candidate) -> float:
        """The chunk's relevance to the query, 0..1."""
        if profile.weight <= 0:
            return 0.0
        strength = min(candidate.strength, 1.0)
        w = self.coverage_weight
        return candidate.coverage * w + strength * (1.0 - w)

    def decide(self, profile: QueryProfile, ranked: Sequence[Candidate]) -> list[bool]:
        """For each ranked chunk, whether it passes the threshold."""
        threshold = self.threshold_for(profile)
        return [self.relevance(profile, c) >= threshold for c in ranked]

    def features(self, profile: QueryProfile, ranked: Sequence[Candidate]) -> dict[str, Any]:
        """The gate's inputs for the best chunk (for calibration and diagnosis)."""
        weight = profile.weight
        top = ranked[0] if ranked else None
        second = ranked[1] if len(ranked) > 1 else None
        return {
            "terms": len(profile.terms),
            "weight": weight,
            "unknown": profile.unknown_share,
            "bm25": top.bm25 if top else 0.0,
            "coverage": top.coverage if top else 0.0,
            "strength": top.strength if top else 0.0,
            "margin": ((top.bm25 - second.bm25) / top.bm25) if top and second and top.bm25 else 0.0,
            "coverage2": second.coverage if second else 0.0,
            "max_coverage": max((c.coverage for c in ranked), default=0.0),
        }
