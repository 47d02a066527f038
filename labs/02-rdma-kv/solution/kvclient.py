"""Lab 2 reference solution: GET with one-sided RDMA READs.

get(key): read the key's bucket, then its value slot, straight from the
server's memory (two RDMA READs, no server CPU), and validate the pair
against a concurrent PUT (versions equal and even, crc32 right), retrying
when they disagree. PUT stays a two-sided RPC (SEND/RECV)."""

from __future__ import annotations

import time

from nslab.rdma.kv import (
    BUCKET,
    MAX_PROBES,
    RDMA_PORT,
    SLOT_HDR,
    Connection,
    KVError,
    key_hash,
    slot_crc,
)

MAX_RETRIES = 1000  # a GET racing PUTs retries; bounded so a bug cannot spin forever


class KVClient:
    def __init__(self, server: str, port: int = RDMA_PORT):
        self.conn = Connection(server, port)
        self.retries = 0  # how often a concurrent PUT made us read again

    def put(self, key: bytes, value: bytes) -> None:
        self.conn.put(key, value)  # two-sided: the server's handler writes the table

    def get(self, key: bytes) -> bytes | None:
        c = self.conn
        h = key_hash(key)
        for _ in range(MAX_RETRIES):
            torn = False
            for probe in range(MAX_PROBES):
                # READ 1: the bucket (version, key hash, where the value is)
                ver, kh, off, ln = BUCKET.unpack(c.read(c.bucket_addr(h + probe), BUCKET.size))
                if ver == 0 and kh == 0:
                    return None  # an empty bucket ends the probe sequence: no such key
                if ver == 0:
                    # A version read while the server rewrote it: its bytes
                    # from two values (0x00FF -> 0x0100 can read as 0). The
                    # hash says a key lives here: read again.
                    torn = True
                    break
                if kh != h:
                    continue  # another key hashed here: probe the next bucket
                if ver % 2:
                    torn = True  # the server is rewriting it right now
                    break
                # READ 2: the value slot
                slot = c.read(c.slot_addr(off), ln)
                sver, crc, klen, vlen = SLOT_HDR.unpack_from(slot, 0)
                k = slot[SLOT_HDR.size : SLOT_HDR.size + klen]
                val = slot[SLOT_HDR.size + klen : SLOT_HDR.size + klen + vlen]
                if sver != ver or SLOT_HDR.size + klen + vlen > ln or slot_crc(k, val) != crc:
                    torn = True  # bucket and slot from different PUTs: read both again
                    break
                if k != key:
                    continue  # same 64-bit hash, different key
                return val
            if not torn:
                return None
            self.retries += 1
            time.sleep(0)
        raise KVError(f"GET {key!r}: still inconsistent after {MAX_RETRIES} tries")

    def close(self) -> None:
        self.conn.close()
