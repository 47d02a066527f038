"""The scheduling policy interface: which waiting requests to admit, in what order.

The scheduler asks the policy once per engine step, only when requests are
waiting. The question and the answer are plain data (JSON-able), so a policy
can live in another process, behind a socket and a deadline, without the
engine changing:

    question (StepView):
      token_budget   tokens left in this step after running sequences
      free_slots     how many more sequences may run (max_num_seqs - running)
      free_blocks    KV blocks on the free list (cached-but-unused included)
      block_size     tokens per block
      num_running    sequences running now
      waiting        one WaitingView per waiting request, in arrival order:
        request_id, arrival (monotonic seconds), num_tokens (prompt + any
        output so far), block_hashes (hex, one per full block of its prefix,
        chained: equal i-th hashes mean equal first i+1 blocks),
        num_cached_blocks (how many of those the prefix cache holds now)

    answer: a list of request_ids, each at most once, all from `waiting`.

The engine admits in that order while budget, slots and blocks last, and
stops at the first request that does not fit. Requests not named wait for a
later step. An answer that is not such a list (wrong type, unknown or repeated
ids), or a policy that raises, counts as a policy error and the step falls back
to arrival order: the engine keeps serving whatever the policy does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass
class WaitingView:
    request_id: str
    arrival: float
    num_tokens: int
    block_hashes: list[str] = field(default_factory=list)
    num_cached_blocks: int = 0


@dataclass
class StepView:
    token_budget: int
    free_slots: int
    free_blocks: int
    block_size: int
    num_running: int
    waiting: list[WaitingView]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class SchedulingPolicy(Protocol):
    def order(self, view: StepView) -> list[str]: ...


class FCFSPolicy:
    """First come, first served: vLLM's default."""

    def order(self, view: StepView) -> list[str]:
        return [w.request_id for w in view.waiting]


class ShortestPromptFirstPolicy:
    """An example of a different decision: the shortest requests go first
    (least prefill work), then arrival order. (Lab 05 asks for a prefix-aware
    policy; the kit ships none.)"""

    def order(self, view: StepView) -> list[str]:
        ranked = sorted(view.waiting, key=lambda w: (w.num_tokens, w.arrival))
        return [w.request_id for w in ranked]


POLICIES = {"fcfs": FCFSPolicy, "shortest-first": ShortestPromptFirstPolicy}


def checked_order(policy: SchedulingPolicy, view: StepView) -> list[str] | None:
    """The policy's answer if it is valid, else None (the caller falls back)."""
    try:
        answer = policy.order(view)
    except Exception:
        return None
    known = {w.request_id for w in view.waiting}
    if not isinstance(answer, list) or not all(isinstance(i, str) for i in answer):
        return None
    if len(set(answer)) != len(answer) or not set(answer) <= known:
        return None
    return answer
