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

The built-in policies are building blocks: round-robin, random and Maglev
consistent hashing. Load-aware policies (power of two choices, join the
shortest queue) are what lab 4 asks you to write. A policy can also run in a
process of its own (`RemotePolicy`, `--policy socket:PATH`): the dispatcher
then asks it over the policy protocol (nslab.policy) with a deadline, and a
late or invalid answer is replaced by round-robin's choice.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

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
    "maglev": ConsistentHash,
}


# -- the policy protocol, kind `dispatch` (see nslab.policy) ------------------
_VIEW_FIELDS = (
    "name",
    "url",
    "outstanding",
    "reported_queue",
    "sent_since_report",
    "done_since_report",
    "served",
    "failures",
)


class Choice(BaseModel):
    """A dispatch decision: the name of one of the pods offered."""

    model_config = ConfigDict(extra="forbid", strict=True)
    pod: str


def wire_state(request: DispatchRequest, pods: list[PodView]) -> dict[str, Any]:
    return {
        "request": {"model": request.model, "key": request.key},
        "pods": [{k: getattr(p, k) for k in _VIEW_FIELDS} for p in pods],
    }


def _check(state: dict, c: Choice) -> str | None:
    names = [p["name"] for p in state["pods"]]
    return None if c.pod in names else f"pod {c.pod!r} was not offered (offered: {names})"


class RemotePolicy(Policy):
    """A dispatch policy in another process. Fallback: round-robin."""

    def __init__(self, path: str, deadline_s: float = 0.05):
        from nslab.policy.protocol import PolicyLink

        self.turn = 0

        def fallback(state: dict) -> Choice:
            self.turn += 1
            return Choice(pod=state["pods"][self.turn % len(state["pods"])]["name"])

        self.link = PolicyLink(path, "dispatch", {}, Choice, fallback, _check, deadline_s)

    @property
    def needs_metrics(self) -> bool:  # type: ignore[override]
        return bool(self.link.info.get("needs_metrics"))

    async def choose_async(self, request: DispatchRequest, pods: list[PodView]) -> PodView:
        c = await self.link.ask(wire_state(request, pods))
        return next(p for p in pods if p.name == c.pod)


def remote_adapter(policy: Policy, params: dict) -> tuple[dict, Callable[[dict], dict]]:
    """The policy side (nslab.policy.runner): protocol state -> DispatchRequest and
    PodViews -> policy.choose -> the chosen pod's name."""
    info = {"needs_metrics": bool(getattr(policy, "needs_metrics", False))}

    def handle(state: dict) -> dict:
        r = state["request"]
        req = DispatchRequest(r["model"], r["key"], {})
        pods = [PodView(**p) for p in state["pods"]]
        chosen = policy.choose(req, pods)
        return {"pod": getattr(chosen, "name", chosen)}

    return info, handle
