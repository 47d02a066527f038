"""Tokenizers: bytes for the tiny model, the GGUF's own BPE for SmolLM2.

Both offer the same small interface: encode, decode, a chat template and the
special token ids the engine stops on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import jinja2

Message = dict[str, str]


class Tokenizer(Protocol):
    eos_token_id: int | None
    bos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def chat_prompt(self, messages: list[Message]) -> str: ...


# A ChatML-like template, as SmolLM2's, so the tiny model's chat path is the same shape.
TINY_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


class ByteTokenizer:
    """One token per UTF-8 byte (0-255), then <bos>=256, <eos>=257."""

    def __init__(self, cfg):
        self.bos_token_id = cfg.bos_token_id
        self.eos_token_id = cfg.eos_token_id
        self._template = jinja2.Environment().from_string(TINY_TEMPLATE)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def chat_prompt(self, messages: list[Message]) -> str:
        return self._template.render(messages=messages, add_generation_prompt=True)


class HFTokenizer:
    """A transformers tokenizer built from a GGUF file's metadata."""

    def __init__(self, tok):
        self.tok = tok
        self.bos_token_id = tok.bos_token_id
        self.eos_token_id = tok.eos_token_id

    @classmethod
    def from_gguf(cls, path: Path) -> HFTokenizer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def chat_prompt(self, messages: list[Message]) -> str:
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
