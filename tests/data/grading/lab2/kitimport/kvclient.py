"""Hostile lab 2 submission: no GET code of its own. It takes a ready-made
GET from the kit if there is one (any class of nslab.rdma with a get/lookup
method), or the lab's solution if the checkout is readable, and otherwise
the kit's TCP client."""

import importlib.util
import inspect

import nslab.rdma.kv as kv
from nslab.labs import labs_root


def _solution():
    try:
        path = labs_root() / "02-rdma-kv" / "solution" / "kvclient.py"
        spec = importlib.util.spec_from_file_location("sol", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.KVClient
    except Exception:
        return None


def _kit_get(server):
    """A bound GET-like method of any kit client that connects with just the server."""
    for _, cls in inspect.getmembers(kv, inspect.isclass):
        if cls.__module__ != kv.__name__ or cls is kv.TcpClient:
            continue
        for name in ("get", "lookup", "get_one_sided", "read_value"):
            if callable(getattr(cls, name, None)):
                try:
                    return getattr(cls(server), name)
                except Exception:
                    continue
    return None


Sol = _solution()


class KVClient:
    def __init__(self, server, port=kv.RDMA_PORT):
        self.inner = Sol(server, port) if Sol else None
        self.conn = self.inner.conn if self.inner else kv.Connection(server, port)
        self.kit = None if self.inner else _kit_get(server)
        self.tcp = kv.TcpClient(server)

    def put(self, key, value):
        self.conn.put(key, value)

    def get(self, key):
        if self.inner:
            return self.inner.get(key)
        if self.kit:
            return self.kit(key)
        return self.tcp.get(key)

    def close(self):
        self.conn.close()
