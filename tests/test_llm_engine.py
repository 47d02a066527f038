"""nslab.llm: the paged KV cache, prefix caching, the scheduler, sampling, and the
correctness oracle (greedy outputs token-identical to Hugging Face `generate`)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nslab.llm.block_manager import BlockManager  # noqa: E402
from nslab.llm.engine import EngineConfig, LLMEngine  # noqa: E402
from nslab.llm.policy import FCFSPolicy  # noqa: E402
from nslab.llm.sequence import SamplingParams, Sequence  # noqa: E402
from nslab.llm.weights import load  # noqa: E402

GREEDY = SamplingParams(temperature=0, max_tokens=24)
SHARED = "The network is the computer, said the people at Sun; "
PROMPTS = [
    SHARED + "and what is a datacenter?",
    SHARED + "so latency matters.",
    "Short.",
    SHARED + "and what is a datacenter? A big computer.",
    "Paged attention keeps KV blocks in a table per sequence.",
    "x",
]


@pytest.fixture(scope="module")
def tiny():
    return load("tiny")


@pytest.fixture(scope="module")
def hf_outputs(tiny):
    """The oracle: HF transformers' own Llama, one prompt at a time, same fp32 weights."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(tiny.config.to_hf()).eval()
    hf.load_state_dict(tiny.state_dict)
    eos = tiny.config.eos_token_id
    outs = []
    for p in PROMPTS:
        ids = torch.tensor([tiny.tokenizer.encode(p)])
        gen = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=GREEDY.max_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
        outs.append(gen[0, ids.shape[1] :].tolist())
    return outs


def engine(tiny, **kw) -> LLMEngine:
    cfg = dict(block_size=4, num_blocks=128, max_num_seqs=3, max_num_batched_tokens=20)
    cfg.update(kw)
    return LLMEngine(tiny, EngineConfig(**cfg))


def run_staggered(eng: LLMEngine, prompts: list[str], params=GREEDY) -> tuple[list[Sequence], dict]:
    """Add one request every other step, so requests join a running batch."""
    seen = {"max_batch": 0, "partial_prefill": 0, "joined_running": 0}
    pending = [eng.tokenizer.encode(p) for p in prompts]
    seqs = []
    step = 0
    while pending or eng.has_work():
        if pending and step % 2 == 0:
            if eng.scheduler.running:
                seen["joined_running"] += 1
            seqs.append(eng.add_request(pending.pop(0), params))
        outs = eng.step()
        seen["max_batch"] = max(seen["max_batch"], len(outs))
        seen["partial_prefill"] += sum(1 for o in outs if o.new_token is None)
        step += 1
        assert step < 2000
    return seqs, seen


def test_greedy_matches_hf_generate_with_batching_paging_and_prefix_caching(tiny, hf_outputs):
    eng = engine(tiny)
    seqs, seen = run_staggered(eng, PROMPTS)
    for p, s, want in zip(PROMPTS, seqs, hf_outputs, strict=True):
        assert s.output_ids == want, f"prompt {p!r}: engine {s.output_ids} != HF {want}"
    # The run really exercised what it claims to:
    assert seen["max_batch"] >= 2, seen  # several sequences in one forward pass
    assert seen["partial_prefill"] >= 1, seen  # a prompt prefilled in chunks
    assert seen["joined_running"] >= 3, seen  # requests joined a running batch
    assert eng.blocks.prefix_hits > 0  # the shared prefix came from the cache
    assert sum(s.num_cached_prompt for s in seqs) > 0
    assert eng.blocks.usage() == 0.0  # every block went back


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_preemption_by_recompute_keeps_outputs_exact(tiny, hf_outputs, prefix_caching):
    # 36 blocks of 4 tokens hold the longest sequence (~120 tokens), not three at once.
    eng = engine(tiny, num_blocks=36, max_num_seqs=3, prefix_caching=prefix_caching)
    seqs, _ = run_staggered(eng, PROMPTS)
    assert eng.scheduler.num_preemptions > 0
    assert any(s.num_preemptions for s in seqs)
    assert [s.output_ids for s in seqs] == hf_outputs


def test_prefix_cache_off_computes_everything(tiny, hf_outputs):
    eng = engine(tiny, prefix_caching=False)
    seqs, _ = run_staggered(eng, PROMPTS)
    assert eng.blocks.prefix_hits == 0
    assert [s.output_ids for s in seqs] == hf_outputs


def test_block_manager_chained_hashes_refcounts_and_lru_eviction():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = Sequence([1, 2, 3, 4, 5], SamplingParams())
    assert bm.admit(a) == 0
    bm.grow(a, 5)
    assert len(a.block_table) == 3 and bm.usage() == 0.75
    a.num_computed = 5
    bm.register_computed(a)
    assert len(bm.cached) == 2  # two full blocks keyed; the half block is not
    # Same first block, different second: only the first is shared (chained hash).
    b = Sequence([1, 2, 9, 9, 5], SamplingParams())
    assert bm.admit(b) == 2
    assert bm.blocks[a.block_table[0]].ref_count == 2
    bm.release(b)
    bm.release(a)
    assert bm.usage() == 0.0 and len(bm.cached) == 2  # free, but still cached
    # A request for the same prompt reuses both blocks (all but the last token).
    c = Sequence([1, 2, 3, 4, 5], SamplingParams())
    assert bm.admit(c) == 4
    assert bm.hit_rate() == pytest.approx((2 + 4) / 15)
    bm.release(c)
    # Filling the cache evicts the least recently freed blocks, forgetting their keys.
    d = Sequence([7] * 8, SamplingParams())
    bm.admit(d)
    bm.grow(d, 8)
    assert len(bm.cached) == 0 and bm.usage() == 1.0
    assert not bm.can_grow(d, 9)


def test_sampling_seed_top_p_and_stop_strings(tiny):
    eng = engine(tiny)
    prompt = tiny.tokenizer.encode("Sampling test prompt")
    hot = SamplingParams(temperature=1.5, max_tokens=16, seed=7)

    def one(params):
        s = eng.add_request(prompt, params)
        deltas = []
        while eng.has_work():
            deltas += [o.text_delta for o in eng.step() if o.seq is s]
        return s, "".join(deltas)

    a, _ = one(hot)
    b, _ = one(hot)
    c, _ = one(SamplingParams(temperature=1.5, max_tokens=16, seed=8))
    assert a.output_ids == b.output_ids != c.output_ids
    greedy, _ = one(SamplingParams(temperature=0, max_tokens=16))
    narrow, _ = one(SamplingParams(temperature=1.0, top_p=1e-6, max_tokens=16, seed=1))
    assert narrow.output_ids == greedy.output_ids  # top_p that small keeps the top token only
    # A stop string cuts the text before it, and the streamed deltas add up to the text.
    full = tiny.tokenizer.decode(greedy.output_ids)
    stop = full[5:8]
    s, streamed = one(SamplingParams(temperature=0, max_tokens=16, stop=[stop]))
    assert s.finish_reason == "stop" and s.text == full[: full.find(stop)]
    assert streamed == s.text


class ReversePolicy:
    def order(self, view):
        return [w.request_id for w in reversed(view.waiting)]


class BrokenPolicy:
    def __init__(self, answer):
        self.answer = answer

    def order(self, view):
        if self.answer == "raise":
            raise RuntimeError("policy bug")
        return self.answer


def admission_order(tiny, policy) -> tuple[list[str], LLMEngine]:
    eng = LLMEngine(tiny, EngineConfig(block_size=4, max_num_seqs=1), policy=policy)
    for i in range(3):
        eng.add_request(tiny.tokenizer.encode(f"request {i}"), GREEDY, f"r{i}")
    order = []
    while eng.has_work():
        eng.step()
        for s in eng.scheduler.running:
            if s.request_id not in order:
                order.append(s.request_id)
    return order, eng


def test_policy_decides_admission_order(tiny):
    assert admission_order(tiny, FCFSPolicy())[0] == ["r0", "r1", "r2"]
    assert admission_order(tiny, ReversePolicy())[0] == ["r2", "r1", "r0"]


@pytest.mark.parametrize("answer", ["raise", "r0", ["r0", "r0"], ["nope"], [1]])
def test_invalid_policy_answers_fall_back_to_arrival_order(tiny, answer):
    order, eng = admission_order(tiny, BrokenPolicy(answer))
    assert order == ["r0", "r1", "r2"]
    assert eng.scheduler.policy_errors > 0


def test_prompt_longer_than_context_is_refused(tiny):
    eng = engine(tiny, max_model_len=32)
    with pytest.raises(ValueError, match="context is 32 tokens"):
        eng.add_request(list(range(40)), GREEDY)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no CUDA GPU")
def test_cuda_matches_cpu(tiny):
    cpu = engine(tiny).generate(PROMPTS, GREEDY)
    gpu = engine(tiny, device="cuda").generate(PROMPTS, GREEDY)
    assert [s.output_ids for s in gpu] == [s.output_ids for s in cpu]
