"""Choosing the next token: greedy, or temperature and top-p with an optional seed."""

from __future__ import annotations

import torch

from nslab.llm.sequence import SamplingParams

_default = torch.Generator().manual_seed(torch.seed())


def make_generator(params: SamplingParams) -> torch.Generator:
    # A seeded request gets its own generator, so its draws do not depend on
    # which other requests share its batches.
    if params.seed is None:
        return _default
    return torch.Generator().manual_seed(params.seed)


def sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int:
    """`logits`: [vocab] fp32 on the CPU."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        # keep the smallest set whose mass reaches top_p (always the top token)
        keep = (sorted_p.cumsum(-1) - sorted_p) < params.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
    return int(torch.multinomial(probs, 1, generator=gen))
