"""Latency statistics with one, stated definition (nearest rank), so that a p99
means the same in the load generator, the graders and the students' plots."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99, 99.9)


def percentile(values: Sequence[float] | np.ndarray, p: float) -> float:
    """Nearest-rank percentile: the smallest value such that at least p % of
    the values are <= it. NaN for no values."""
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} outside (0, 100]")
    a = np.sort(np.asarray(values, dtype=float))
    if a.size == 0:
        return math.nan
    rank = math.ceil(round(p / 100.0 * a.size, 9))  # round: 99.9 % of 1000 is 999, not 999.0000001
    return float(a[max(rank, 1) - 1])


def summary(latencies_s: Sequence[float] | np.ndarray) -> dict[str, float]:
    """p50..p99.9, mean and max, in milliseconds."""
    a = np.asarray(latencies_s, dtype=float) * 1000.0
    out = {f"p{p:g}_ms": percentile(a, p) for p in PERCENTILES}
    out["mean_ms"] = float(a.mean()) if a.size else math.nan
    out["max_ms"] = float(a.max()) if a.size else math.nan
    return out


def within(values: Sequence[float], pct: float) -> bool:
    """True when every value is within pct % of their mean (perf_analyzer's stability rule)."""
    v = [x for x in values if not math.isnan(x)]
    if len(v) != len(values) or not v:
        return False
    m = sum(v) / len(v)
    if m == 0:
        return all(x == 0 for x in v)
    return all(abs(x - m) <= pct / 100.0 * abs(m) for x in v)
