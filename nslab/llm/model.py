"""A Llama-shaped decoder in plain PyTorch that reads and writes a paged KV cache.

The parameter names are Hugging Face's (`model.layers.0.self_attn.q_proj.weight`,
...), so the same state dict loads into this model and into transformers'
`LlamaForCausalLM`, which the tests use as the correctness oracle. The maths
follows HF's Llama step by step (RMSNorm in fp32, rotate-half RoPE, SiLU MLP)
so that greedy outputs match token for token.

One forward pass takes a flat batch: the new tokens of every scheduled
sequence, concatenated (a decode contributes 1 token, a prefill chunk many).
Projections and MLPs run on the whole flat batch at once; attention runs per
sequence over the keys and values gathered from that sequence's blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_position: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_hf(self):
        """The same shape as a transformers `LlamaConfig` (for the oracle)."""
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=self.max_position,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            attention_bias=False,
            mlp_bias=False,
        )


@dataclass
class SeqSlice:
    """A prefill chunk: where its tokens sit in the flat batch, and its blocks."""

    start: int  # first of its tokens in the flat batch
    length: int  # how many new tokens it has in this step
    blocks: torch.Tensor  # its block table, covering all its tokens so far
    ctx: int  # tokens so far, new ones included


@dataclass
class Decodes:
    """Sequences with one new token each: the first `num` rows of the flat batch,
    attended in one padded call."""

    num: int
    block_tables: torch.Tensor  # [B, max_blocks], padded with block 0
    mask: torch.Tensor  # [B, 1, 1, max_blocks * block_size]: True for real keys


@dataclass
class Batch:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slot_mapping: torch.Tensor  # [T]: cache slot each new token's K/V is written to
    seqs: list[SeqSlice]  # sequences with several new tokens (prefill chunks), after the decodes
    sample_rows: torch.Tensor  # flat-batch rows whose logits are needed (last token of a seq)
    decodes: Decodes | None = None


class KVCache:
    """Per layer, K and V for every slot: [num_blocks * block_size, kv_heads, head_dim].

    A slot is block_id * block_size + offset, so a block table turns into slot
    numbers with one multiply-add; the block manager owns which blocks are whose.
    """

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, device, dtype):
        shape = (cfg.num_layers, num_blocks * block_size, cfg.num_kv_heads, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.num_blocks = num_blocks
        self.block_size = block_size


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()  # [T, head_dim]


class Linear(nn.Linear):
    """`nn.Linear` (same parameter name, same maths) that, once `pack()`ed, multiplies
    by its weight stored transposed, [in, out] and contiguous. On the CPU, the GEMM
    of a few rows against that layout runs up to 2x faster than against nn.Linear's
    [out, in] (measured: docs/llm.md), and decoding is all few-row GEMMs."""

    wt: torch.Tensor | None = None

    def pack(self) -> None:
        self.wt = self.weight.detach().t().contiguous()
        self.weight.data = self.wt.t()  # a view: the weights stay in memory once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.wt is None:
            return super().forward(x)
        return x @ self.wt


def _gather(blocks: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The slots of the blocks in `table` ([...] block ids), in order: [..., n * block_size,
    KVH, hd]. index_select copies whole blocks at memcpy speed (plain indexing, 1.7x slower)."""
    got = blocks.index_select(0, table.reshape(-1))
    return got.view(*table.shape[:-1], -1, *blocks.shape[2:])


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        hd = cfg.head_dim
        self.layer, self.nh, self.nkv, self.hd = layer, cfg.num_heads, cfg.num_kv_heads, hd
        self.q_proj = Linear(cfg.hidden_size, cfg.num_heads * hd, bias=False)
        self.k_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = Linear(cfg.num_heads * hd, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, batch: Batch, cache: KVCache) -> torch.Tensor:
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.nh, self.hd)
        k = self.k_proj(x).view(t, self.nkv, self.hd)
        v = self.v_proj(x).view(t, self.nkv, self.hd)
        c, s = cos[:, None, :], sin[:, None, :]
        q = q * c + rotate_half(q) * s
        k = k * c + rotate_half(k) * s
        # Write the new tokens' K/V into their slots, then attend per sequence.
        kc, vc = cache.k[self.layer], cache.v[self.layer]
        kc[batch.slot_mapping] = k
        vc[batch.slot_mapping] = v
        # Viewed as blocks, a block table gathers whole blocks (block_size slots at once).
        bs = cache.block_size
        kb = kc.view(-1, bs, self.nkv, self.hd)
        vb = vc.view(-1, bs, self.nkv, self.hd)
        outs = []
        d = batch.decodes
        if d is not None:
            # One query each: gather every sequence's blocks into a padded batch and mask
            # the padding, so B decodes cost one attention call, not B. The query heads
            # that share a KV head become that head's query rows (GQA without copying K/V).
            n = d.num
            qd = q[:n].view(n, self.nkv, self.nh // self.nkv, self.hd)
            kd = _gather(kb, d.block_tables).transpose(1, 2)  # [B, KVH, ctx, hd]
            vd = _gather(vb, d.block_tables).transpose(1, 2)
            od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=d.mask)
            outs.append(od.reshape(n, self.nh, self.hd))
        for sq in batch.seqs:
            qs = q[sq.start : sq.start + sq.length].transpose(0, 1)  # [H, n, hd]
            ks = _gather(kb, sq.blocks)[: sq.ctx].transpose(0, 1)  # [KVH, ctx, hd]
            vs = _gather(vb, sq.blocks)[: sq.ctx].transpose(0, 1)
            if sq.length == sq.ctx:  # the whole sequence: plain causal
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
            else:
                # Query i (at position ctx-n+i) sees keys 0..ctx-n+i: causal with an offset,
                # because earlier chunks (or a cached prefix) are already in the cache.
                qpos = torch.arange(sq.ctx - sq.length, sq.ctx, device=x.device)[:, None]
                mask = torch.arange(sq.ctx, device=x.device)[None, :] <= qpos
                o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)
            outs.append(o.transpose(0, 1))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return self.o_proj(out.reshape(t, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, batch, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, batch, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def pack(self) -> None:
        """Lay every projection out for few-row GEMMs (see `Linear`); after `.to(device)`."""
        if self.lm_head.weight is self.model.embed_tokens.weight:
            # untie: the embedding keeps its rows contiguous, the head gets its own layout
            self.lm_head.weight = nn.Parameter(self.lm_head.weight.detach().clone())
        for mod in self.modules():
            if isinstance(mod, Linear):
                mod.pack()

    @torch.inference_mode()
    def forward(self, batch: Batch, cache: KVCache) -> torch.Tensor:
        """Logits [len(batch.sample_rows), vocab] in fp32."""
        m = self.model
        x = m.embed_tokens(batch.input_ids)
        cos, sin = m.rotary(batch.positions)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for layer in m.layers:
            x = layer(x, cos, sin, batch, cache)
        x = m.norm(x[batch.sample_rows])
        return self.lm_head(x).float()


def tiny_config() -> ModelConfig:
    """A Llama with the real architecture and toy sizes (a byte-level vocabulary)."""
    return ModelConfig(
        vocab_size=260,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_position=1024,
        tie_word_embeddings=False,
        bos_token_id=256,
        eos_token_id=257,
    )


def tiny_state_dict(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights. Scaled wider than a training init so that logits are
    well separated: greedy decoding then depends on the maths, not on rounding."""
    g = torch.Generator().manual_seed(seed)
    model = LlamaModel(cfg)
    sd = {}
    for name, p in model.state_dict().items():
        if name.endswith("norm.weight"):
            sd[name] = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
        else:
            fan_in = p.shape[-1] if "embed" not in name else 1
            sd[name] = torch.randn(p.shape, generator=g) / fan_in**0.5
    return sd
