"""Latency statistics of the load generator. Percentiles are nslab's one
definition (nearest rank, nslab.stats), so that a p99 means the same in the load
generator, the graders and the students' plots."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from nslab.stats import percentile

PERCENTILES = (50, 90, 95, 99, 99.9)


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
