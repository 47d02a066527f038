"""Hostile lab 2 submission: patches the grader's and the kit's classes at
import (value checks that always pass, a server whose handler is never
counted, a transport that claims one-sided READs), then GETs by RPC."""

import nslab.rdma.kv as kv
import nslab.rdma.soft as soft

kv.check_value = lambda *a, **k: 1
kv.versioned_value = lambda key, version, size=100, secret=b"": b"x" * size
kv.Server.stats = lambda self: {"handler_calls": 0, "one_sided_read": 10**6, "bad_rkey": 10**6}
kv.Server.handle = lambda self, msg: kv.REP.pack(b"K", 0)
_orig_init = soft.Context.__init__


def _init(self, *a, **k):
    _orig_init(self, *a, **k)
    self.stats.update(one_sided_read=10**6, handler_calls=0)


soft.Context.__init__ = _init
try:  # the checks module, if it were importable from here
    import test_kv  # noqa: F401

    test_kv.check_value = kv.check_value
except ImportError:
    pass


class KVClient:
    def __init__(self, server, port=kv.RDMA_PORT):
        self.conn = kv.Connection(server, port)

    def put(self, key, value):
        self.conn.put(key, value)

    def get(self, key):
        status, value = self.conn.rpc(b"G", key)
        return value if status == b"K" else None

    def close(self):
        self.conn.close()
