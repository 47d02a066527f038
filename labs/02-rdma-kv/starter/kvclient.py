"""Lab 2: GET with one-sided RDMA READs (your code).

The KV server keeps its hash table in a registered memory region (see the
layout in README.md and nslab/rdma/kv.py). PUT is a two-sided RPC and is
done for you. Your job is get(): fetch the value with one-sided RDMA READs
(self.conn.read(remote_addr, length)), without the server's CPU.
"""

from __future__ import annotations

from nslab.rdma.kv import (  # noqa: F401  (what you will need)
    BUCKET,
    MAX_PROBES,
    RDMA_PORT,
    SLOT_HDR,
    Connection,
    KVError,
    key_hash,
    slot_crc,
)


class KVClient:
    def __init__(self, server: str, port: int = RDMA_PORT):
        self.conn = Connection(server, port)

    def put(self, key: bytes, value: bytes) -> None:
        self.conn.put(key, value)  # two-sided: the server's handler writes the table

    def get(self, key: bytes) -> bytes | None:
        """The value stored under key, or None when there is none."""
        # TODO: replace this two-sided RPC (the server's CPU runs a handler for
        # every GET) by one-sided READs:
        #   1. h = key_hash(key); READ the bucket at self.conn.bucket_addr(h + probe)
        #      (BUCKET.size bytes) and unpack it: version, key_hash, slot_off, slot_len.
        #      All zeros (version 0, key_hash 0): empty -> no such key. Version 0
        #      with a key_hash: torn by a PUT (see the guide), read again. Other
        #      key_hash: try the next bucket (at most MAX_PROBES).
        #   2. READ the slot at self.conn.slot_addr(slot_off) (slot_len bytes) and
        #      unpack SLOT_HDR: version, crc32, key_len, val_len; then key, value.
        #   3. A PUT may run while you read: retry (bounded) unless the bucket's
        #      version is even and equal to the slot's, and slot_crc(key, value)
        #      matches. Check that the key is yours.
        #   4. Let RDMA errors propagate (conn.read raises KVError): never return
        #      data from a failed READ.
        status, value = self.conn.rpc(b"G", key)
        return value if status == b"K" else None

    def close(self) -> None:
        self.conn.close()
