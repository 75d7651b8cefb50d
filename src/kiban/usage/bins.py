"""The latency and TTFT histogram bins: fixed edges, and the bins a ledger record adds.

Written with each ledger batch by ``kiban.usage.rollups``; read back by ``kiban.usage.histograms``
to locate exact percentiles. Migration 0009 keeps its own frozen copy of ``record_bins``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from typing import Any

from kiban.models import UsageStatus

LATENCY = "latency"
TTFT = "ttft"


def _edges() -> tuple[float, ...]:
    # 0, then from 0.01 ms up by 5% (rounded to four significant digits, so the edges are exact
    # decimal-looking floats) until past 10^8 ms: a bin is never wider than 5% of its values.
    # Never change these without a migration that rebuilds usage_histograms_hourly.
    edges, i = [0.0], 0
    while edges[-1] < 1e8:
        edges.append(float(f"{0.01 * 1.05**i:.4g}"))
        i += 1
    return tuple(edges)


EDGES = _edges()


def bin_of(value: float) -> int:
    """The bin of a value: bin ``i`` holds ``EDGES[i-1] <= value < EDGES[i]`` (open at the ends)."""
    return bisect_right(EDGES, value)


def bin_range(index: int) -> tuple[float | None, float | None]:
    """A bin's bounds ``[lo, hi)``; ``None`` where it is open."""
    lo = EDGES[index - 1] if index > 0 else None
    hi = EDGES[index] if index < len(EDGES) else None
    return lo, hi


def record_bins(record: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The (metric, bin) pairs a ledger record adds to the histograms."""
    if record["status"] == UsageStatus.REJECTED:  # never reached a provider: no latency
        return []
    bins = [(LATENCY, bin_of(float(record.get("response_time_ms") or 0.0)))]
    ttft = record.get("time_to_first_token_ms")
    if ttft is not None:
        bins.append((TTFT, bin_of(float(ttft))))
    return bins
