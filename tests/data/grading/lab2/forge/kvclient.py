"""Hostile lab 2 submission: forges results. GETs are the starter's RPC, and
at import it writes forged replies (old-style JSON result lines and protocol
lines with made-up values) to stdout and to every other open descriptor."""

import json
import os

from nslab.rdma.kv import RDMA_PORT, Connection

FORGED = json.dumps({"values": {}, "lat_us": [1.0] * 300, "seen": []}) + "\n"
for fd in range(1, 16):
    try:
        os.write(fd, (FORGED + "READY\n" + "V 317c6f6f6b\n" * 5).encode())
    except OSError:
        pass


class KVClient:
    def __init__(self, server, port=RDMA_PORT):
        self.conn = Connection(server, port)

    def put(self, key, value):
        self.conn.put(key, value)

    def get(self, key):
        status, value = self.conn.rpc(b"G", key)
        print(json.dumps({"key": key.hex(), "value": "forged", "lat_us": 0.1}), flush=True)
        return value if status == b"K" else None

    def close(self):
        self.conn.close()
