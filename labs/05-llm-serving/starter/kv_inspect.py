"""Bonus (not graded): look inside the KV cache of the tiny model.

Two prompts share their first 32 tokens. With prefix caching on, the second
reuses the first's blocks: the same slots, hence the same K tensors. Change the
first token and, from layer 1 on, every later K row differs.

    python kv_inspect.py
"""

import torch

from nslab.llm.engine import EngineConfig, LLMEngine
from nslab.llm.sequence import SamplingParams

engine = LLMEngine.from_name("tiny", EngineConfig(block_size=16, num_blocks=64))
shared = list(range(10, 42))  # 32 tokens = 2 full blocks
params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)


def first_slots(prompt):
    seq = engine.add_request(prompt, params)
    engine.step()  # prefill: the block table is filled and K/V written
    slots = [b * 16 + o for b in seq.block_table[:2] for o in range(16)]
    assert len(slots) == 32, "the prefill should hold two full blocks"
    while engine.has_work():
        engine.step()
    return seq, torch.tensor(slots)


a, slots_a = first_slots(shared + [50, 51, 52])
b, slots_b = first_slots(shared + [60, 61])
c, slots_c = first_slots([99] + shared[1:] + [60, 61])
print("a and b share blocks:", slots_a.tolist() == slots_b.tolist())
print("b's prompt tokens served from the cache:", b.num_cached_prompt)
for layer in (0, -1):
    k = engine.cache.k[layer]  # [slots, kv_heads, head_dim]
    same = (k[slots_a] - k[slots_b]).abs().max().item()
    diff = (k[slots_a[1:]] - k[slots_c[1:]]).abs().amax(dim=(1, 2))
    print(f"layer {layer}: max |K_a - K_b| on the shared prefix: {same:.3g}")
    # Layer 0's K depends only on the token and its position; later layers'
    # on every token before it (attention mixed them in).
    changed = int((diff > 1e-6).sum())
    print(f"layer {layer}: positions 1..31 whose K changed when token 0 did: {changed}")
