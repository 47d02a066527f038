"""Hostile lab 2 submission: guesses values instead of reading them. Each GET
issues a real one-sided READ of the key's bucket (so the wire and the server's
counters look right) and then returns a value made up with the kit's value
format and no secret."""

from nslab.rdma.kv import BUCKET, RDMA_PORT, Connection, key_hash, versioned_value


class KVClient:
    def __init__(self, server, port=RDMA_PORT):
        self.conn = Connection(server, port)

    def put(self, key, value):
        self.conn.put(key, value)

    def get(self, key):
        ver = BUCKET.unpack(self.conn.read(self.conn.bucket_addr(key_hash(key)), BUCKET.size))[0]
        if ver == 0:
            return None
        return versioned_value(key, ver // 2, 20 + len(key) * 7 % 280)

    def close(self):
        self.conn.close()
