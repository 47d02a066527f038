"""The engine: one step = schedule a batch, run the model once, sample, stream.

    engine = LLMEngine.from_name("tiny")
    outs = engine.generate(["Hello"], SamplingParams(temperature=0, max_tokens=8))

`EngineLoop` runs the same engine on a thread of its own and hands tokens to
callers (the HTTP server) as they come: requests join and leave between steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nslab.llm.block_manager import BlockManager
from nslab.llm.metrics import EngineMetrics
from nslab.llm.model import Batch, Decodes, KVCache, LlamaModel, SeqSlice
from nslab.llm.policy import SchedulingPolicy
from nslab.llm.sampler import make_generator, sample
from nslab.llm.scheduler import Scheduler
from nslab.llm.sequence import SamplingParams, Sequence, Status
from nslab.llm.weights import LoadedModel, load


@dataclass
class EngineConfig:
    device: str = "cpu"
    block_size: int = 16
    num_blocks: int = 512
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 256
    max_model_len: int = 2048
    prefix_caching: bool = True
    max_waiting: int = 256  # more queued requests than this are refused (HTTP 503)


@dataclass
class StepOutput:
    seq: Sequence
    new_token: int | None  # None for a prefill chunk that sampled nothing
    text_delta: str
    finished: bool


def pick_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        from nslab.errors import NslabError

        raise NslabError("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu")
    return device


class LLMEngine:
    def __init__(
        self,
        loaded: LoadedModel,
        config: EngineConfig | None = None,
        policy: SchedulingPolicy | None = None,
    ):
        self.cfg = cfg = config or EngineConfig()
        self.name = loaded.name
        self.tokenizer = loaded.tokenizer
        self.model_config = loaded.config
        # A sequence must fit in the cache alone, or preempting the others cannot save it.
        capacity = cfg.num_blocks * cfg.block_size
        self.max_model_len = min(cfg.max_model_len, loaded.config.max_position, capacity)
        self.device = torch.device(pick_device(cfg.device))
        model = LlamaModel(loaded.config)
        model.load_state_dict(loaded.state_dict, strict=False)  # lm_head may be tied
        self.model = model.to(self.device).eval()
        self.model.pack()
        self.cache = KVCache(
            loaded.config, cfg.num_blocks, cfg.block_size, self.device, torch.float32
        )
        self.blocks = BlockManager(cfg.num_blocks, cfg.block_size, cfg.prefix_caching)
        self.scheduler = Scheduler(
            self.blocks, cfg.max_num_seqs, cfg.max_num_batched_tokens, policy
        )
        self.metrics = EngineMetrics(self)
        self._by_id: dict[str, Sequence] = {}
        self.eos = loaded.config.eos_token_id

    @classmethod
    def from_name(cls, name: str, config: EngineConfig | None = None, **kw) -> LLMEngine:
        return cls(load(name), config, **kw)

    # -- requests ----------------------------------------------------------------

    def add_request(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str = ""
    ) -> Sequence:
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is "
                f"{self.max_model_len} tokens"
            )
        seq = Sequence(list(prompt_ids), params, request_id)
        seq.generator = make_generator(params)
        self._by_id[seq.request_id] = seq
        self.scheduler.add(seq)
        return seq

    def abort(self, request_id: str) -> None:
        seq = self._by_id.pop(request_id, None)
        if seq is not None and seq.status is not Status.FINISHED:
            seq.finish_reason = "abort"
            self.scheduler.finish(seq)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # -- one step ------------------------------------------------------------------

    def _build_batch(self, items: list[tuple[Sequence, int]]) -> tuple[Batch, list[Sequence]]:
        """The flat batch: single-token items (decodes) first, then prefill chunks.
        Built from Python lists, a handful of tensors per step (not a few per sequence)."""
        bs, dev = self.cfg.block_size, self.device
        ones = [it for it in items if it[1] == 1]
        chunks = [it for it in items if it[1] != 1]
        ids, pos, slots, seqs, rows, sampled = [], [], [], [], [], []
        for seq, n in ones + chunks:
            start, table = seq.num_computed, seq.block_table
            if n != 1:
                blocks = torch.tensor(table[: -(-(start + n) // bs)], device=dev)
                seqs.append(SeqSlice(len(ids), n, blocks, start + n))
            ids += seq.token_ids[start : start + n]
            pos += range(start, start + n)
            slots += [table[p // bs] * bs + p % bs for p in range(start, start + n)]
            if start + n == len(seq):  # caught up: the last position's logits pick a token
                rows.append(len(ids) - 1)
                sampled.append(seq)
        decodes = None
        if ones:
            ctx = [seq.num_computed + 1 for seq, _ in ones]
            width = -(-max(ctx) // bs)
            tables = [seq.block_table[:width] for seq, _ in ones]
            tables = [t + [0] * (width - len(t)) for t in tables]
            mask = torch.arange(width * bs)[None, :] < torch.tensor(ctx)[:, None]
            decodes = Decodes(
                len(ones), torch.tensor(tables, device=dev), mask[:, None, None, :].to(dev)
            )
        batch = Batch(
            input_ids=torch.tensor(ids, device=dev),
            positions=torch.tensor(pos, device=dev),
            slot_mapping=torch.tensor(slots, device=dev),
            seqs=seqs,
            sample_rows=torch.tensor(rows, dtype=torch.long, device=dev),
            decodes=decodes,
        )
        return batch, sampled

    def step(self) -> list[StepOutput]:
        plan = self.scheduler.schedule()
        if not plan.items:
            return []
        batch, sampled = self._build_batch(plan.items)
        logits = self.model(batch, self.cache).cpu()
        now = time.monotonic()
        for seq, n in plan.items:
            seq.num_computed += n
            self.blocks.register_computed(seq)
        outs = [StepOutput(s, None, "", False) for s, _ in plan.items if s not in sampled]
        # Greedy requests take one argmax over the whole batch, not one call each.
        greedy = logits.argmax(dim=-1).tolist()
        for row, seq in enumerate(sampled):
            if seq.params.temperature == 0:
                token = greedy[row]
            else:
                token = sample(logits[row], seq.params, seq.generator)
            seq.output_ids.append(token)
            outs.append(self._after_token(seq, token, now))
        self.metrics.on_step(plan, outs, now)
        return outs

    def _after_token(self, seq: Sequence, token: int, now: float) -> StepOutput:
        p = seq.params
        if seq.first_token_time is None:
            seq.first_token_time = now
        seq.token_times.append(now)
        full = self.tokenizer.decode(seq.output_ids)
        reason = None
        cut = [i for i in (full.find(s) for s in p.stop) if i >= 0]
        if cut:
            full, reason = full[: min(cut)], "stop"
        elif token == self.eos and not p.ignore_eos:
            reason = "stop"
        elif len(seq.output_ids) >= p.max_tokens or len(seq) >= self.max_model_len:
            reason = "length"
        seq.text = full
        if reason is None:
            end = _safe_end(full, p.stop)
        else:
            end = len(full)
            seq.finish_reason = reason
            self.scheduler.finish(seq)
            self._by_id.pop(seq.request_id, None)
        delta = full[seq.emitted : end] if end > seq.emitted else ""
        seq.emitted = max(seq.emitted, end)
        return StepOutput(seq, token, delta, reason is not None)

    # -- offline use -------------------------------------------------------------

    def generate(self, prompts: list[list[int] | str], params: SamplingParams) -> list[Sequence]:
        seqs = [
            self.add_request(p if isinstance(p, list) else self.tokenizer.encode(p), params)
            for p in prompts
        ]
        while self.has_work():
            self.step()
        return seqs


def _safe_end(text: str, stops: list[str]) -> int:
    """How much of `text` can be streamed now: hold back a half-decoded character
    and any tail that could still grow into a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end -= k
                break
    return end


class EngineLoop:
    """The engine on its own thread. `submit` and `abort` may be called from any
    thread; callbacks run on the engine thread (post them to your event loop)."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._cv = threading.Condition()
        self._inbox: list[tuple[Sequence | None, str | None, Callable | None]] = []
        self._callbacks: dict[str, Callable[[StepOutput], None]] = {}
        self._stop = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def num_queued(self) -> int:
        return len(self.engine.scheduler.waiting) + len(self._inbox)

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        request_id: str,
        callback: Callable[[StepOutput], None],
    ) -> None:
        seq = Sequence(list(prompt_ids), params, request_id)
        with self._cv:
            self._inbox.append((seq, None, callback))
            self._cv.notify()

    def abort(self, request_id: str) -> None:
        with self._cv:
            self._inbox.append((None, request_id, None))
            self._cv.notify()

    def _run(self) -> None:
        eng = self.engine
        while True:
            with self._cv:
                while not self._inbox and not eng.has_work() and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                inbox, self._inbox = self._inbox, []
            for seq, abort_id, cb in inbox:
                if abort_id is not None:
                    eng.abort(abort_id)
                    self._callbacks.pop(abort_id, None)
                    continue
                got = eng.add_request(seq.prompt_ids, seq.params, seq.request_id)
                got.arrival = seq.arrival  # queueing in the inbox counts toward TTFT
                self._callbacks[seq.request_id] = cb
            try:
                outs = eng.step()
            except BaseException as exc:  # a bug: stop serving loudly, not silently
                self.error = exc
                for cb in self._callbacks.values():
                    cb(None)
                raise
            for out in outs:
                cb = self._callbacks.get(out.seq.request_id)
                if cb is None:
                    continue
                if out.finished:
                    del self._callbacks[out.seq.request_id]
                cb(out)
