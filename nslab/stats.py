"""The one percentile definition of nslab: nearest rank.

The p-th percentile is the smallest sample such that at least p % of the
samples are at or below it (numpy's `method="inverted_cdf"`). Every reported
value is one that was really observed, and a p99 means the same in the load
generator, the measurement tools, the graders and the students' plots. (Linear
interpolation, numpy's default, invents values between samples and, with few
samples, moves a p99 with the second-largest one.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float] | np.ndarray, p: float) -> float:
    """Nearest-rank percentile of `values` for p in (0, 100]. NaN for no values."""
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} outside (0, 100]")
    a = np.sort(np.asarray(values, dtype=float))
    if a.size == 0:
        return math.nan
    rank = math.ceil(round(p / 100.0 * a.size, 9))  # round: 99.9 % of 1000 is 999, not 999.0000001
    return float(a[max(rank, 1) - 1])
