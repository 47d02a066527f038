"""Dispatch policies: which pod gets the next request.

A policy is a small class with `choose(request, pods) -> pod`, where `pods`
holds the pods currently believed healthy (never empty) as `PodView`s:

    class MyPolicy(Policy):
        def choose(self, request, pods):
            return min(pods, key=lambda p: p.outstanding)

What a PodView offers: name, url, outstanding (requests this dispatcher sent
to it and has not had answered yet), reported_queue (the pod's own count of
requests it holds, from its /metrics, refreshed every `poll_interval_s`),
queue_estimate (reported_queue corrected by what was sent and answered since
that report), served, failures.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from nslab.serving.http import Pool, split_url


@dataclass(eq=False)
class PodView:
    name: str
    url: str
    outstanding: int = 0
    reported_queue: float = 0.0  # nslab_inflight_requests at the last scrape
    sent_since_report: int = 0
    done_since_report: int = 0
    healthy: bool = True
    served: int = 0
    failures: int = 0
    pool: Pool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        host, port = split_url(self.url)
        self.pool = Pool(host, port)

    @property
    def queue_estimate(self) -> float:
        return max(0.0, self.reported_queue + self.sent_since_report - self.done_since_report)


@dataclass
class DispatchRequest:
    model: str
    key: str  # consistent-hashing key: the X-Nslab-Key header, else the client's address
    headers: dict[str, str]


class Policy:
    """Base class. `needs_metrics = True` makes the dispatcher scrape pods' /metrics."""

    needs_metrics = False

    def choose(self, request: DispatchRequest, pods: list[PodView]) -> PodView:
        raise NotImplementedError


class RoundRobin(Policy):
    def __init__(self) -> None:
        self.i = 0

    def choose(self, request, pods):
        self.i += 1
        return pods[self.i % len(pods)]


class Random(Policy):
    def __init__(self, seed: int | None = 0) -> None:
        self.rng = random.Random(seed)

    def choose(self, request, pods):
        return self.rng.choice(pods)


class LeastOutstanding(Policy):
    """The pod with the fewest requests this dispatcher is waiting on (ties: first)."""

    def choose(self, request, pods):
        return min(pods, key=lambda p: p.outstanding)


class PowerOfTwo(Policy):
    """Sample two distinct pods at random, send to the less loaded (Mitzenmacher)."""

    def __init__(self, seed: int | None = 0) -> None:
        self.rng = random.Random(seed)

    def choose(self, request, pods):
        if len(pods) == 1:
            return pods[0]
        a, b = self.rng.sample(pods, 2)
        return a if a.outstanding <= b.outstanding else b


class JoinShortestQueue(Policy):
    """The pod whose own queue (from its metrics, corrected for requests in
    transit since the scrape) is shortest."""

    needs_metrics = True

    def choose(self, request, pods):
        return min(pods, key=lambda p: (p.queue_estimate, p.outstanding))


def _h(s: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8, key=salt).digest(), "big")


def maglev_table(names: list[str], m: int = 4099) -> list[int]:
    """Maglev's lookup table (Eisenbud et al., NSDI'16): each backend fills
    slots in its own pseudo-random permutation, in turns, until all m slots
    (m prime, m >> len(names)) are taken. Entry = index into `names`."""
    if not names:
        raise ValueError("maglev_table needs at least one backend")
    n = len(names)
    offset = [_h(x, b"offset") % m for x in names]
    skip = [_h(x, b"skip") % (m - 1) + 1 for x in names]
    nxt = [0] * n
    entry = [-1] * m
    filled = 0
    while True:
        for i in range(n):
            c = (offset[i] + nxt[i] * skip[i]) % m
            while entry[c] >= 0:
                nxt[i] += 1
                c = (offset[i] + nxt[i] * skip[i]) % m
            entry[c] = i
            nxt[i] += 1
            filled += 1
            if filled == m:
                return entry


class ConsistentHash(Policy):
    """Maglev hashing of the request key: the same key goes to the same pod, and
    when a pod leaves only its keys move."""

    def __init__(self, m: int = 4099) -> None:
        self.m = m
        self._cache: tuple[tuple[str, ...], list[int]] | None = None

    def choose(self, request, pods):
        names = tuple(sorted(p.name for p in pods))
        if self._cache is None or self._cache[0] != names:
            self._cache = (names, maglev_table(list(names), self.m))
        by_name = {p.name: p for p in pods}
        slot = _h(request.key, b"key") % self.m
        return by_name[names[self._cache[1][slot]]]


POLICIES: dict[str, type[Policy]] = {
    "round-robin": RoundRobin,
    "random": Random,
    "least-outstanding": LeastOutstanding,
    "p2c": PowerOfTwo,
    "jsq": JoinShortestQueue,
    "maglev": ConsistentHash,
}
