"""Continuous batching with chunked prefill and preemption by recompute.

Every engine step the scheduler builds one batch under a token budget
(`max_num_batched_tokens`), Sarathi-style:

1. running sequences that are decoding, one token each (decodes first, so
   ongoing streams keep their pace while long prompts arrive);
2. running sequences still prefilling, a chunk each of what budget is left;
3. waiting sequences, admitted in the order the *policy* chooses, while
   budget, batch slots and free KV blocks last.

When a running sequence needs a block and none is free, the most recently
admitted running sequence is preempted: its blocks are released and it goes
back to the head of the queue, to be recomputed later (its prompt and the
tokens generated so far; the prefix cache often still holds most of them).

Which waiting requests to admit is the policy's decision (see policy.py);
everything else here is mechanism the engine enforces whatever it is told.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from nslab.llm.block_manager import BlockManager
from nslab.llm.policy import FCFSPolicy, SchedulingPolicy, StepView, WaitingView, checked_order
from nslab.llm.sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    items: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, new tokens)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.items)


class Scheduler:
    def __init__(
        self,
        blocks: BlockManager,
        max_num_seqs: int = 16,
        max_num_batched_tokens: int = 256,
        policy: SchedulingPolicy | None = None,
    ):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.policy = policy or FCFSPolicy()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.num_preemptions = 0
        self.policy_errors = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        seq.status = Status.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq)

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.status = Status.WAITING
        seq.num_computed = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        taken: set[int] = set()
        decodes = [s for s in self.running if s.is_decoding]
        prefills = [s for s in self.running if not s.is_decoding]
        for seq in decodes + prefills:
            if seq.status is not Status.RUNNING or budget == 0:
                continue
            n = min(seq.num_uncomputed, budget)
            while not self.blocks.can_grow(seq, seq.num_computed + n):
                victims = [s for s in self.running if s.seq_no not in taken]
                victim = victims[-1]  # the most recently admitted not yet in this batch
                self._preempt(victim, batch)
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                continue
            self.blocks.grow(seq, seq.num_computed + n)
            batch.items.append((seq, n))
            taken.add(seq.seq_no)
            budget -= n
        if batch.preempted or not self.waiting:
            return batch  # no admissions in a step that had to take blocks back
        for seq in self._admission_order(budget):
            if budget == 0 or len(self.running) >= self.max_num_seqs:
                break
            n_cached = len(self.blocks.cached_prefix(seq)) * self.blocks.block_size
            n = min(len(seq) - n_cached, budget)
            if not self.blocks.can_admit(seq, n):
                break  # keep the policy's order: no overtaking when memory is short
            seq.num_computed = self.blocks.admit(seq)
            if seq.num_preemptions == 0:
                seq.num_cached_prompt = seq.num_computed
            self.blocks.grow(seq, seq.num_computed + n)
            self.waiting.remove(seq)
            self.running.append(seq)
            seq.status = Status.RUNNING
            batch.items.append((seq, n))
            budget -= n
        return batch

    def _admission_order(self, budget: int) -> list[Sequence]:
        view = StepView(
            token_budget=budget,
            free_slots=self.max_num_seqs - len(self.running),
            free_blocks=len(self.blocks.free),
            block_size=self.blocks.block_size,
            num_running=len(self.running),
            waiting=[
                WaitingView(
                    request_id=s.request_id,
                    arrival=s.arrival,
                    num_tokens=len(s),
                    block_hashes=[h.hex() for h in self.blocks.prefix_hashes(s)],
                    num_cached_blocks=len(self.blocks.cached_prefix(s)),
                )
                for s in self.waiting
            ],
        )
        by_id = {s.request_id: s for s in self.waiting}
        order = checked_order(self.policy, view)
        if order is None:
            self.policy_errors += 1
            order = [w.request_id for w in view.waiting]
        return [by_id[i] for i in order]
