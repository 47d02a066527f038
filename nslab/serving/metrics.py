"""Prometheus metrics in the text exposition format (version 0.0.4), and a parser
for it (the dispatcher's join-shortest-queue policy and the graders read pods'
metrics). No client library: a pod exposes a handful of series."""

from __future__ import annotations

import bisect
import math
import re
from collections import defaultdict


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str):
        self.name, self.help = name, help
        self.values: dict[tuple, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(dict(k))} {_num(v)}" for k, v in self.values.items()]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: list[float]):
        self.name, self.help = name, help
        self.buckets = sorted(buckets)
        self.series: dict[tuple, list] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [[0] * (len(self.buckets) + 1), 0.0, 0]
        s[0][bisect.bisect_left(self.buckets, value)] += 1
        s[1] += value
        s[2] += 1

    def lines(self) -> list[str]:
        out = []
        for key, (counts, total, n) in self.series.items():
            labels = dict(key)
            acc = 0
            for le, c in zip(self.buckets + [math.inf], counts, strict=True):
                acc += c
                out.append(f"{self.name}_bucket{_labels({**labels, 'le': _num(le)})} {acc}")
            out.append(f"{self.name}_sum{_labels(labels)} {_num(total)}")
            out.append(f"{self.name}_count{_labels(labels)} {n}")
        return out


class Registry:
    def __init__(self) -> None:
        self.metrics: list[Counter | Histogram] = []

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        out = []
        for m in self.metrics:
            out.append(f"# HELP {m.name} {m.help}")
            out.append(f"# TYPE {m.name} {m.kind}")
            out += m.lines()
        return "\n".join(out) + "\n"


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Text exposition -> {metric name: [(labels, value), ...]}."""
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out[m.group(1)].append((labels, float(m.group(3))))
    return dict(out)


def value(parsed: dict, name: str, **labels: str) -> float:
    """Sum of a metric's series whose labels include `labels` (0 when absent)."""
    total = 0.0
    for lab, v in parsed.get(name, []):
        if all(lab.get(k) == val for k, val in labels.items()):
            total += v
    return total
