"""Lab 2's key-value store: a hash table in a registered memory region.

Server (`python -m nslab.rdma.kv serve`): the table lives in one MR that
clients may READ remotely. PUTs (and, for comparison, GETs) are two-sided
RPCs: the client SENDs a request, the server's handler thread receives it,
updates the table and SENDs a reply. A TCP port serves the same RPCs (the
baseline) and a `STATS` request (for the grader).

Layout of the MR (little-endian):

    header   64 B    magic u32 | nbuckets u32 | slot_size u32 | values_off u32
    buckets  nbuckets x 32 B
             version u64 | key_hash u64 | slot_off u32 | slot_len u32 | pad 8
    values   nbuckets x slot_size B (slot i belongs to bucket i)
             version u64 | crc32 u32 | key_len u16 | val_len u16 | key | value

A bucket or slot version is odd while the server rewrites it, and even when
stable; bucket and slot carry the same version once an update is complete,
and the slot's crc32 covers key + value. A one-sided GET reads the bucket,
then the slot, and retries if they disagree (a concurrent PUT).
Open addressing with linear probing over at most MAX_PROBES buckets;
key_hash is the first 8 bytes of blake2b(key).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import struct
import sys
import threading
import time
import zlib

import nslab.rdma.enums as e
from nslab.errors import NslabError
from nslab.rdma import cm
from nslab.rdma import soft as v

MAGIC = 0x4B565232  # "KVR2"
HEADER = struct.Struct("<IIII")
HEADER_SIZE = 64
BUCKET = struct.Struct("<QQII8x")
SLOT_HDR = struct.Struct("<QIHH")
MAX_PROBES = 8
RDMA_PORT, TCP_PORT = 7471, 7470
MSG_SIZE = 4096  # largest RPC message
RECV_DEPTH = 16


class KVError(NslabError):
    """A KV operation failed (bad reply, RDMA error completion, ...)."""


def key_hash(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") or 1


def slot_crc(key: bytes, value: bytes) -> int:
    return zlib.crc32(value, zlib.crc32(key))


# ----------------------------------------------------------------- the table
class Table:
    """The hash table over a buffer (the server's MR). Only the server writes."""

    def __init__(self, buf: memoryview, nbuckets: int, slot_size: int):
        self.buf, self.n, self.slot = buf, nbuckets, slot_size
        self.values_off = HEADER_SIZE + nbuckets * BUCKET.size
        HEADER.pack_into(buf, 0, MAGIC, nbuckets, slot_size, self.values_off)

    @staticmethod
    def size(nbuckets: int, slot_size: int) -> int:
        return HEADER_SIZE + nbuckets * (BUCKET.size + slot_size)

    def _find(self, key: bytes, h: int) -> tuple[int, bool]:
        """(bucket index, exists) for key; raises when the probe window is full."""
        for p in range(MAX_PROBES):
            i = (h + p) % self.n
            ver, kh, off, ln = BUCKET.unpack_from(self.buf, HEADER_SIZE + i * BUCKET.size)
            if ver == 0:
                return i, False
            if kh == h:
                s = self.values_off + off
                _, _, kl, _ = SLOT_HDR.unpack_from(self.buf, s)
                if bytes(self.buf[s + SLOT_HDR.size : s + SLOT_HDR.size + kl]) == key:
                    return i, True
        raise KVError(f"table full around bucket {h % self.n} (more than {MAX_PROBES} collisions)")

    def put(self, key: bytes, value: bytes) -> None:
        if SLOT_HDR.size + len(key) + len(value) > self.slot:
            raise KVError(f"key+value of {len(key) + len(value)} B do not fit a {self.slot}-B slot")
        h = key_hash(key)
        i, _ = self._find(key, h)
        b = HEADER_SIZE + i * BUCKET.size
        old = BUCKET.unpack_from(self.buf, b)[0]
        busy, new = old + 1 if old % 2 == 0 else old, (old | 1) + 1
        off = i * self.slot
        s = self.values_off + off
        # 1. mark bucket and slot busy (odd), 2. write, 3. publish the even version.
        # Each field is written with the bytes it ends up with (slice
        # assignment): struct's pack_into zeroes its target first, and a READ
        # racing it saw an all-zero bucket, i.e. "no such key".
        buf = self.buf
        buf[b : b + BUCKET.size] = BUCKET.pack(busy, h, off, self.slot)
        buf[s : s + 8] = struct.pack("<Q", busy)
        body = key + value
        buf[s + SLOT_HDR.size : s + SLOT_HDR.size + len(body)] = body
        buf[s : s + SLOT_HDR.size] = SLOT_HDR.pack(busy, slot_crc(key, value), len(key), len(value))
        buf[s : s + 8] = struct.pack("<Q", new)
        buf[b : b + BUCKET.size] = BUCKET.pack(new, h, off, self.slot)

    def get(self, key: bytes) -> bytes | None:
        h = key_hash(key)
        i, ok = self._find(key, h)
        if not ok:
            return None
        s = self.values_off + i * self.slot
        _, _, kl, vl = SLOT_HDR.unpack_from(self.buf, s)
        a = s + SLOT_HDR.size + kl
        return bytes(self.buf[a : a + vl])


# ----------------------------------------------------------------- RPC messages
# request: op (b"P" put, b"G" get) | key_len u16 | val_len u16 | key | value
# reply:   status (b"K" ok, b"N" not found, b"E" error) | val_len u16 | value
REQ = struct.Struct("<cHH")
REP = struct.Struct("<cH")


def encode_req(op: bytes, key: bytes, value: bytes = b"") -> bytes:
    return REQ.pack(op, len(key), len(value)) + key + value


class Server:
    """The KV server: an RDMA listener (one QP per client, one handler thread
    for all) and a TCP listener (baseline RPCs and STATS)."""

    def __init__(self, addr: str = "0.0.0.0", rdma_port: int = RDMA_PORT, tcp_port: int = TCP_PORT, nbuckets: int = 4096, slot_size: int = 512):  # fmt: skip
        self.ctx = v.Context("kv", addr=addr)
        self.pd = v.PD(self.ctx)
        access = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ  # no remote writes
        self.mr = v.MR(self.pd, Table.size(nbuckets, slot_size), access)
        self.table = Table(self.mr.mv, nbuckets, slot_size)
        self.cq = v.CQ(self.ctx, 4096)
        self.lock = threading.Lock()  # PUTs from RDMA and TCP handlers
        self.handler_calls = 0  # RPCs this server's code handled (RDMA and TCP)
        self.rdma_rpcs = 0
        self.tcp_rpcs = 0
        self.clients: dict[int, dict] = {}
        self.listener = cm.Listener(rdma_port, addr)
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((addr, tcp_port))
        self.tcp.listen(64)
        self.closed = False

    def private(self) -> dict:
        return {"rkey": self.mr.rkey, "addr": self.mr.buf, "length": self.mr.length, "nbuckets": self.table.n, "slot_size": self.table.slot, "values_off": self.table.values_off}  # fmt: skip

    def stats(self) -> dict:
        s = self.ctx.stats
        return {"handler_calls": self.handler_calls, "rdma_rpcs": self.rdma_rpcs, "tcp_rpcs": self.tcp_rpcs, "one_sided_read": s["one_sided_read"], "one_sided_read_bytes": s["one_sided_read_bytes"], "one_sided_write": s["one_sided_write"], "naks_sent": s["naks_sent"], "bad_rkey": s["bad_rkey"], "clients": len(self.clients)}  # fmt: skip

    def handle(self, msg: bytes) -> bytes:
        """One RPC. This is the server CPU work a one-sided GET avoids."""
        with self.lock:
            self.handler_calls += 1
            try:
                op, kl, vl = REQ.unpack_from(msg, 0)
                key = bytes(msg[REQ.size : REQ.size + kl])
                if op == b"P":
                    self.table.put(key, bytes(msg[REQ.size + kl : REQ.size + kl + vl]))
                    return REP.pack(b"K", 0)
                if op == b"G":
                    val = self.table.get(key)
                    return REP.pack(b"N", 0) if val is None else REP.pack(b"K", len(val)) + val
                return REP.pack(b"E", 0)
            except (KVError, struct.error) as exc:
                err = str(exc).encode()[:200]
                return REP.pack(b"E", len(err)) + err

    # -- RDMA side
    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                buf = v.MR(self.pd, MSG_SIZE * (RECV_DEPTH + 1), e.IBV_ACCESS_LOCAL_WRITE)

                def post(qp, buf=buf):
                    qp.post_recv([v.RecvWR(i, 1, [v.SGE(buf.buf + i * MSG_SIZE, MSG_SIZE, buf.lkey)]) for i in range(RECV_DEPTH)])  # fmt: skip

                ep = self.listener.accept(self.ctx, self.pd, cq=self.cq, private=self.private(), timeout=1.0, on_qp=post, depth=64)  # fmt: skip
            except NslabError:
                buf.close()
                continue
            except OSError:
                return
            self.clients[ep.qp.qp_num] = {"ep": ep, "buf": buf}

    def _rdma_loop(self) -> None:
        while not self.closed:
            for wc in self.cq.poll_wait(1, timeout=0.2) + self.cq.poll(64)[1]:
                c = self.clients.get(wc.qp_num)
                if c is None or wc.opcode == e.IBV_WC_SEND:
                    continue
                if wc.status != e.IBV_WC_SUCCESS:  # the client's QP failed: drop it
                    self.clients.pop(wc.qp_num, None)
                    continue
                buf, qp = c["buf"], c["ep"].qp
                i = wc.wr_id
                reply = self.handle(buf.read(wc.byte_len, i * MSG_SIZE))
                self.rdma_rpcs += 1
                out = RECV_DEPTH * MSG_SIZE
                buf.write(reply, len(reply), out)
                try:
                    qp.post_recv(
                        v.RecvWR(i, 1, [v.SGE(buf.buf + i * MSG_SIZE, MSG_SIZE, buf.lkey)])
                    )
                    qp.post_send(v.SendWR(i, e.IBV_WR_SEND, sg=[v.SGE(buf.buf + out, len(reply), buf.lkey)], send_flags=0))  # fmt: skip
                except NslabError:
                    self.clients.pop(wc.qp_num, None)

    # -- TCP side (baseline)
    def _tcp_loop(self) -> None:
        while not self.closed:
            try:
                s, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_client, args=(s,), daemon=True).start()

    def _tcp_client(self, s: socket.socket) -> None:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        try:
            while True:
                hdr = f.read(4)
                if len(hdr) < 4:
                    return
                (n,) = struct.unpack("<I", hdr)
                msg = f.read(n)
                if msg == b"STATS":
                    reply = json.dumps(self.stats()).encode()
                else:
                    reply = self.handle(msg)
                    self.tcp_rpcs += 1
                s.sendall(struct.pack("<I", len(reply)) + reply)
        except OSError:
            return
        finally:
            s.close()

    def serve_forever(self) -> None:
        for fn in (self._accept_loop, self._rdma_loop, self._tcp_loop):
            threading.Thread(target=fn, daemon=True).start()
        print(f"kv server ready: rdma port {self.listener.port}, tcp port {self.tcp.getsockname()[1]}, {self.table.n} buckets", flush=True)  # fmt: skip
        while not self.closed:
            time.sleep(0.5)


# ----------------------------------------------------------------- client side
class Connection:
    """A client's RDMA connection to the server: a QP, a local buffer, and the
    table's rkey/address. `read` is a one-sided RDMA READ; `rpc` a two-sided
    SEND/RECV round trip."""

    def __init__(self, server: str, port: int = RDMA_PORT, timeout: float = 10.0):
        self.ctx = v.Context("kvc")
        self.pd = v.PD(self.ctx)
        self.buf = v.MR(self.pd, 64 << 10, e.IBV_ACCESS_LOCAL_WRITE)
        self.recv_off = 32 << 10

        def post(qp):
            qp.post_recv(v.RecvWR(1, 1, [v.SGE(self.buf.buf + self.recv_off, MSG_SIZE, self.buf.lkey)]))  # fmt: skip

        self.ep = cm.connect(self.ctx, self.pd, server, port, timeout=timeout, on_qp=post)
        p = self.ep.private
        self.qp, self.cq = self.ep.qp, self.ep.cq
        self.rkey, self.addr = p["rkey"], p["addr"]
        self.nbuckets, self.slot_size, self.values_off = p["nbuckets"], p["slot_size"], p["values_off"]  # fmt: skip
        self.timeout = timeout

    def bucket_addr(self, i: int) -> int:
        return self.addr + HEADER_SIZE + (i % self.nbuckets) * BUCKET.size

    def slot_addr(self, slot_off: int) -> int:
        return self.addr + self.values_off + slot_off

    def read(self, remote_addr: int, length: int) -> bytes:
        """One-sided RDMA READ of `length` bytes at the server's `remote_addr`."""
        if length > self.recv_off:
            raise KVError(f"read of {length} B is larger than the {self.recv_off}-B local buffer")
        wr = v.SendWR(2, e.IBV_WR_RDMA_READ, sg=[v.SGE(self.buf.buf, length, self.buf.lkey)], send_flags=e.IBV_SEND_SIGNALED)  # fmt: skip
        wr.set_wr_rdma(self.rkey, remote_addr)
        self.qp.post_send(wr)
        wcs = self.cq.poll_wait(1, timeout=self.timeout, busy=True)
        if not wcs:
            raise KVError(f"RDMA READ did not complete within {self.timeout} s")
        if wcs[0].status != e.IBV_WC_SUCCESS:
            raise KVError(f"RDMA READ failed: {e.wc_status_str(wcs[0].status)}")
        return self.buf.read(length, 0)

    def rpc(self, op: bytes, key: bytes, value: bytes = b"") -> tuple[bytes, bytes]:
        """Two-sided RPC: SEND a request, wait for the server's SEND back."""
        msg = encode_req(op, key, value)
        if len(msg) > MSG_SIZE:
            raise KVError(f"request of {len(msg)} B exceeds {MSG_SIZE} B")
        self.buf.write(msg, len(msg), 0)
        self.qp.post_send(v.SendWR(1, e.IBV_WR_SEND, sg=[v.SGE(self.buf.buf, len(msg), self.buf.lkey)], send_flags=0))  # fmt: skip
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            for wc in self.cq.poll_wait(1, timeout=max(0.001, end - time.monotonic()), busy=True):
                if wc.status != e.IBV_WC_SUCCESS:
                    raise KVError(f"RPC failed: {e.wc_status_str(wc.status)}")
                if wc.opcode == e.IBV_WC_RECV:
                    rep = self.buf.read(wc.byte_len, self.recv_off)
                    self.qp.post_recv(v.RecvWR(1, 1, [v.SGE(self.buf.buf + self.recv_off, MSG_SIZE, self.buf.lkey)]))  # fmt: skip
                    st, n = REP.unpack_from(rep, 0)
                    return st, rep[REP.size : REP.size + n]
        raise KVError(f"no RPC reply within {self.timeout} s")

    def put(self, key: bytes, value: bytes) -> None:
        st, detail = self.rpc(b"P", key, value)
        if st != b"K":
            raise KVError(f"PUT failed: {detail.decode(errors='replace')}")

    def close(self) -> None:
        self.ep.close()
        self.ctx.close()


class TcpClient:
    """The baseline: the same RPCs over a TCP connection."""

    def __init__(self, server: str, port: int = TCP_PORT, timeout: float = 10.0):
        self.s = socket.create_connection((server, port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.s.makefile("rb")

    def call(self, msg: bytes) -> bytes:
        self.s.sendall(struct.pack("<I", len(msg)) + msg)
        hdr = self.f.read(4)
        if len(hdr) < 4:
            raise KVError("the server closed the TCP connection")
        return self.f.read(struct.unpack("<I", hdr)[0])

    def get(self, key: bytes) -> bytes | None:
        rep = self.call(encode_req(b"G", key))
        st, n = REP.unpack_from(rep, 0)
        return rep[REP.size : REP.size + n] if st == b"K" else None

    def put(self, key: bytes, value: bytes) -> None:
        if REP.unpack_from(self.call(encode_req(b"P", key, value)), 0)[0] != b"K":
            raise KVError("PUT failed")

    def stats(self) -> dict:
        return json.loads(self.call(b"STATS"))

    def close(self) -> None:
        self.s.close()


def versioned_value(key: bytes, version: int, size: int = 100, secret: bytes = b"") -> bytes:
    """A value for (key, version) that only holders of `secret` can make:
    the version in clear, then a keyed blake2b of key and version, repeated
    to `size` bytes. Graders seed it with a secret nonce per grading, so a
    value cannot be guessed or computed by the code under test; a torn or
    mixed-up read does not equal any version's value."""
    head = b"%d|" % version
    mac = hashlib.blake2b(b"%s|%d" % (key, version), key=secret[:64], digest_size=32).hexdigest()
    body = head + (mac.encode() * (size // 64 + 1))
    return body[: max(size, len(head) + 16)]


def check_value(key: bytes, value: bytes, secret: bytes = b"") -> int | None:
    """The version of `value` if it is exactly versioned_value(key, version,
    len(value), secret) for some version, else None."""
    try:
        ver = int(value.split(b"|", 1)[0])
    except ValueError:
        return None
    return ver if versioned_value(key, ver, len(value), secret) == value else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nslab.rdma.kv", description="Lab 2's KV server and grader tools")  # fmt: skip
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the KV server")
    s.add_argument("--addr", default="0.0.0.0")
    s.add_argument("--rdma-port", type=int, default=RDMA_PORT)
    s.add_argument("--tcp-port", type=int, default=TCP_PORT)
    s.add_argument("--buckets", type=int, default=4096)
    s.add_argument("--slot", type=int, default=512)
    u = sub.add_parser("update", help="PUT new versions of keys in a loop (over TCP)")
    u.add_argument("server")
    u.add_argument("--keys", required=True, help="comma-separated keys")
    u.add_argument("--seconds", type=float, default=5.0)
    u.add_argument("--size", type=int, default=100)
    u.add_argument("--rdma", action="store_true", help="PUT over SEND/RECV instead of TCP")
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        Server(a.addr, a.rdma_port, a.tcp_port, a.buckets, a.slot).serve_forever()
        return 0
    keys = [k.encode() for k in a.keys.split(",") if k]
    c = Connection(a.server) if a.rdma else TcpClient(a.server)
    end, ver, n = time.monotonic() + a.seconds, 1000, 0
    while time.monotonic() < end:
        ver += 1
        for k in keys:
            c.put(k, versioned_value(k, ver, a.size))
            n += 1
    print(json.dumps({"puts": n, "last_version": ver}), flush=True)
    c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
