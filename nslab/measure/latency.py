"""Latency samples and their percentiles (nearest rank: nslab.stats)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nslab.stats import percentile


@dataclass
class Latencies:
    """A set of latency samples (milliseconds unless `unit` says otherwise)."""

    samples: list[float] = field(default_factory=list)
    unit: str = "ms"
    failures: int = 0  # attempts that got no answer (not in samples)

    def pct(self, p: float) -> float:
        return percentile(self.samples, p)

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p90(self) -> float:
        return self.pct(90)

    @property
    def p99(self) -> float:
        return self.pct(99)

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {"n": 0, "failures": self.failures}
        return {
            "n": len(self.samples),
            "failures": self.failures,
            "min": min(self.samples),
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "max": max(self.samples),
            "mean": self.mean,
        }

    def __str__(self) -> str:
        if not self.samples:
            return f"no samples ({self.failures} failures)"
        u = self.unit
        return (
            f"n={len(self.samples)} p50={self.p50:.3g} {u} p90={self.p90:.3g} {u} "
            f"p99={self.p99:.3g} {u} max={max(self.samples):.3g} {u}"
        )


class LatencySampler:
    """Times `fn()` up to `n` times (bounded by `timeout_s` overall), with
    `interval_s` between calls. An exception counts as a failure, not a sample."""

    def __init__(
        self,
        fn: Callable[[], object],
        n: int = 100,
        interval_s: float = 0.0,
        timeout_s: float = 30.0,
    ):
        self.fn, self.n, self.interval_s, self.timeout_s = fn, n, interval_s, timeout_s

    def run(self) -> Latencies:
        out = Latencies()
        end = time.monotonic() + self.timeout_s
        for _ in range(self.n):
            if time.monotonic() >= end:
                break
            t0 = time.perf_counter()
            try:
                self.fn()
            except Exception:
                out.failures += 1
            else:
                out.samples.append((time.perf_counter() - t0) * 1000.0)
            if self.interval_s:
                time.sleep(self.interval_s)
        return out
