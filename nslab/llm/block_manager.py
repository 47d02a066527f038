"""The paged KV cache's bookkeeping: blocks, block tables, prefix caching.

The cache is cut into fixed-size blocks of `block_size` token slots. Each
sequence owns a block table (a list of block ids) covering its tokens.

Automatic prefix caching: once a block is full and computed, it is keyed by a
hash chained over all the tokens before it (hash(previous block's hash, this
block's tokens)), so equal keys mean equal prefixes. A new sequence whose
prompt starts with cached blocks takes them (reference count + 1) instead of
computing them again. A block whose count drops to 0 goes to the free list but
keeps its contents and key; it is evicted (its key forgotten) only when the
free list hands it out again, oldest first (LRU).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from nslab.llm.sequence import Sequence


def block_hash(prev: bytes, tokens: list[int]) -> bytes:
    h = hashlib.blake2b(prev, digest_size=16)
    h.update(b"".join(t.to_bytes(4, "little") for t in tokens))
    return h.digest()


@dataclass
class Block:
    id: int
    ref_count: int = 0
    hash: bytes | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True):
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[bytes, int] = {}  # block hash -> block id
        # Metrics, in tokens, as vLLM counts them.
        self.prefix_queries = 0
        self.prefix_hits = 0

    # -- reading ---------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def usage(self) -> float:
        """Fraction of blocks held by running sequences (vllm:kv_cache_usage_perc)."""
        return 1.0 - len(self.free) / len(self.blocks)

    def hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def prefix_hashes(self, seq: Sequence) -> list[bytes]:
        """Chained hashes of the full blocks of `seq` that may come from the cache.
        The last token is always left out: its logits are needed, so it is computed.
        Remembered on the sequence: the scheduler asks every step while it waits."""
        if seq.prefix_hash_memo[0] != len(seq):
            tokens, bs = seq.token_ids, self.block_size
            out, prev = [], b""
            for i in range((len(tokens) - 1) // bs):
                prev = block_hash(prev, tokens[i * bs : (i + 1) * bs])
                out.append(prev)
            seq.prefix_hash_memo = (len(seq), out)
        return seq.prefix_hash_memo[1]

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix of `seq` (nothing is taken)."""
        if not self.prefix_caching:
            return []
        hits = []
        for h in self.prefix_hashes(seq):
            bid = self.cached.get(h)
            if bid is None:
                break
            hits.append(bid)
        return hits

    # -- admitting, growing, freeing -------------------------------------------

    def can_admit(self, seq: Sequence, num_new: int) -> bool:
        """Could `seq` (not yet holding blocks) start with `num_new` tokens computed?"""
        hits = self.cached_prefix(seq)
        cached = len(hits) * self.block_size
        need = self.blocks_needed(cached + num_new) - len(hits)
        in_free = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return need <= len(self.free) - in_free

    def admit(self, seq: Sequence) -> int:
        """Take the cached prefix blocks for `seq`; returns how many tokens they cover."""
        assert not seq.block_table
        hits = self.cached_prefix(seq)
        for bid in hits:
            block = self.blocks[bid]
            if block.ref_count == 0:
                del self.free[bid]
            block.ref_count += 1
            seq.block_table.append(bid)
        seq.block_hashes = [self.blocks[b].hash for b in hits]
        cached = len(hits) * self.block_size
        self.prefix_queries += len(seq.token_ids)
        self.prefix_hits += cached
        return cached

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) - len(seq.block_table) <= len(self.free)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Make the block table of `seq` cover `num_tokens` slots."""
        while len(seq.block_table) < self.blocks_needed(num_tokens):
            bid, _ = self.free.popitem(last=False)  # least recently freed first
            block = self.blocks[bid]
            if block.hash is not None:  # evict: its prefix is no longer cached
                if self.cached.get(block.hash) == bid:
                    del self.cached[block.hash]
                block.hash = None
            block.ref_count = 1
            seq.block_table.append(bid)

    def register_computed(self, seq: Sequence) -> None:
        """Key every block of `seq` that is now full and computed."""
        if not self.prefix_caching:
            return
        bs = self.block_size
        while len(seq.block_hashes) < seq.num_computed // bs:
            i = len(seq.block_hashes)
            prev = seq.block_hashes[-1] if seq.block_hashes else b""
            h = block_hash(prev, seq.token_ids[i * bs : (i + 1) * bs])
            block = self.blocks[seq.block_table[i]]
            if h not in self.cached:  # a twin computed at the same time keeps the key
                self.cached[h] = block.id
                block.hash = h
            seq.block_hashes.append(h)

    def release(self, seq: Sequence) -> None:
        """Drop the references of `seq`; blocks at 0 become free but stay cached.
        Freed tail first, so a prefix's later blocks are evicted before its head."""
        for bid in reversed(seq.block_table):
            block = self.blocks[bid]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[bid] = None
        seq.block_table = []
        seq.block_hashes = []
