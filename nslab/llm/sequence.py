"""A request as the engine sees it: its tokens, its blocks, its progress."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str = ""
    arrival: float = field(default_factory=time.monotonic)
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed: int = 0  # tokens whose K/V are in the cache
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)
    num_cached_prompt: int = 0  # prompt tokens served by the prefix cache at admission
    num_preemptions: int = 0
    finish_reason: str | None = None
    # text of the output so far (up to a stop string) and how much was handed out
    text: str = ""
    emitted: int = 0
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    seq_no: int = field(default_factory=lambda: next(_ids))
    prefix_hash_memo: tuple[int, list[bytes]] = (-1, [])

    def __post_init__(self):
        if not self.request_id:
            self.request_id = f"seq-{self.seq_no}"

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_uncomputed(self) -> int:
        """Tokens still to prefill (0 while decoding: the last sampled token is
        fed in the next step, which is why a decode counts 1)."""
        return len(self) - self.num_computed

    @property
    def is_decoding(self) -> bool:
        return self.num_uncomputed == 1 and bool(self.output_ids)
