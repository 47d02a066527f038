"""Soft RoCEv2 provider vs a Python TCP request/response, between two network
namespaces (a veth pair) this script creates and removes.

    sudo .venv/bin/python benchmarks/rdma.py [--iters 2000] [--mb 30]

Measures, with the responder in its own process in namespace B and the
requester here (in namespace A):
  - 64-byte RDMA WRITE and READ latency (post -> completion, one at a time),
  - 1 MiB RDMA READ and WRITE bandwidth (one operation at a time),
at path MTU 1024 (the default, 1500-byte link) and 4096 (jumbo link), and
the same work done by a TCP server in Python (op, offset, length [+ data] ->
data or ack). The last line ends with
`write64_p50_us=<n> read1m_gbps=<n> ratio_vs_tcp=<n>` (MTU 1024;
ratio_vs_tcp = soft 64-byte WRITE p50 / TCP 64-byte write p50).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nslab.rdma.enums as e  # noqa: E402
from nslab.rdma import cm  # noqa: E402
from nslab.rdma import soft as v  # noqa: E402
from nslab.rdma.netns import make_pair, netns  # noqa: E402

MR_SIZE = 4 << 20
SOFT_PORT, TCP_PORT = 18601, 18602
REQ = struct.Struct("!cQI")  # op (R/W), offset, length
FULL = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_WRITE


# ----------------------------------------------------------------- responders (namespace B)
def serve_soft(addr: str) -> None:
    ctx = v.Context("bench-srv", addr=addr)
    pd = v.PD(ctx)
    mr = v.MR(pd, MR_SIZE, FULL)
    with cm.Listener(SOFT_PORT, addr) as lst:
        while True:
            ep = lst.accept(ctx, pd, private={"rkey": mr.rkey, "addr": mr.buf}, mtu=4096, timeout=120)  # fmt: skip
            ep.sock.settimeout(None)
            while ep.sock.recv(1):  # the client closes the TCP channel when done
                pass
            print(f"served: {dict(ctx.stats)}", flush=True)
            ep.close()


def _recv_exact(s: socket.socket, n: int, buf: memoryview) -> None:
    got = 0
    while got < n:
        k = s.recv_into(buf[got:n])
        if not k:
            raise EOFError
        got += k


def serve_tcp(addr: str) -> None:
    mem = bytearray(MR_SIZE)
    mv = memoryview(mem)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, TCP_PORT))
    ls.listen(4)
    hdr = bytearray(REQ.size)
    while True:
        s, _ = ls.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                _recv_exact(s, REQ.size, memoryview(hdr))
                op, off, n = REQ.unpack(hdr)
                if op == b"W":
                    _recv_exact(s, n, mv[off : off + n])
                    s.sendall(b"k")
                else:
                    s.sendall(mv[off : off + n])
        except (EOFError, ConnectionError):
            s.close()


# ----------------------------------------------------------------- requester (namespace A)
def soft_run(pair, mtu: int, iters: int, mb: int) -> dict:
    with netns(pair.a):
        ctx = v.Context("bench-cli", addr=pair.a_ip)
        pd = v.PD(ctx)
        mr = v.MR(pd, MR_SIZE, FULL)
        ep = cm.connect(ctx, pd, pair.b_ip, SOFT_PORT, mtu=mtu)
    rkey, raddr = ep.private["rkey"], ep.private["addr"]
    out: dict = {"mtu": ep.mtu}
    try:

        def one(op: int, size: int, busy: bool) -> float:
            wr = v.SendWR(1, op, sg=[v.SGE(mr.buf, size, mr.lkey)])
            wr.set_wr_rdma(rkey, raddr)
            t0 = time.perf_counter()
            ep.qp.post_send(wr)
            wcs = ep.cq.poll_wait(1, timeout=10, busy=busy)
            dt = time.perf_counter() - t0
            if not wcs or wcs[0].status != 0:
                raise RuntimeError(f"RDMA op failed: {wcs}")
            return dt

        for name, op in (("write", e.IBV_WR_RDMA_WRITE), ("read", e.IBV_WR_RDMA_READ)):
            for _ in range(50):
                one(op, 64, True)  # warm up
            lat = sorted(one(op, 64, True) * 1e6 for _ in range(iters))
            out[f"{name}64_p50_us"] = statistics.median(lat)
            out[f"{name}64_p99_us"] = lat[int(0.99 * len(lat))]
            t = [one(op, 1 << 20, False) for _ in range(mb)]
            out[f"{name}1m_gbps"] = 8 * (1 << 20) * mb / sum(t) / 1e9
        out["stats"] = dict(ctx.stats)
    finally:
        ep.close()
        ctx.close()
    return out


def tcp_run(pair, iters: int, mb: int) -> dict:
    with netns(pair.a):
        s = socket.create_connection((pair.b_ip, TCP_PORT), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    out: dict = {}

    def one(op: bytes, size: int) -> float:
        t0 = time.perf_counter()
        if op == b"W":
            s.sendall(REQ.pack(op, 0, size) + bytes(mv[:size]) if size <= 4096 else REQ.pack(op, 0, size))  # fmt: skip
            if size > 4096:
                s.sendall(mv[:size])
            _recv_exact(s, 1, mv)
        else:
            s.sendall(REQ.pack(op, 0, size))
            _recv_exact(s, size, mv)
        return time.perf_counter() - t0

    try:
        for name, op in (("write", b"W"), ("read", b"R")):
            for _ in range(50):
                one(op, 64)
            lat = sorted(one(op, 64) * 1e6 for _ in range(iters))
            out[f"{name}64_p50_us"] = statistics.median(lat)
            out[f"{name}64_p99_us"] = lat[int(0.99 * len(lat))]
            t = [one(op, 1 << 20) for _ in range(mb)]
            out[f"{name}1m_gbps"] = 8 * (1 << 20) * mb / sum(t) / 1e9
    finally:
        s.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--iters", type=int, default=2000, help="latency samples per op (default 2000)")
    ap.add_argument(
        "--mb", type=int, default=30, help="1 MiB operations per bandwidth run (default 30)"
    )
    ap.add_argument("--serve", choices=["soft", "tcp"], help=argparse.SUPPRESS)
    ap.add_argument("--addr", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve == "soft":
        serve_soft(args.addr)
        return 0
    if args.serve == "tcp":
        serve_tcp(args.addr)
        return 0
    if os.geteuid() != 0:
        print("benchmarks/rdma.py needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    pair = make_pair(f"trdmab{os.getpid() % 1000}", mtu=9000, subnet="10.79.4")
    procs = []
    try:
        me = [sys.executable, str(Path(__file__).resolve())]
        for kind in ("soft", "tcp"):
            procs.append(subprocess.Popen(pair.exec_cmd("b", [*me, "--serve", kind, "--addr", pair.b_ip]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
        time.sleep(1.5)
        print(f"# soft RoCEv2 vs TCP between namespaces {pair.a} and {pair.b} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
        res = {"soft1024": soft_run(pair, 1024, args.iters, args.mb)}
        res["soft4096"] = soft_run(pair, 4096, args.iters, args.mb)
        res["tcp"] = tcp_run(pair, args.iters, args.mb)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        pair.remove()
    rows = [
        ("64 B WRITE p50 [us]", "write64_p50_us"),
        ("64 B WRITE p99 [us]", "write64_p99_us"),
        ("64 B READ p50 [us]", "read64_p50_us"),
        ("64 B READ p99 [us]", "read64_p99_us"),
        ("1 MiB WRITE [Gbit/s]", "write1m_gbps"),
        ("1 MiB READ [Gbit/s]", "read1m_gbps"),
    ]
    print(f"{'measure':<24}{'soft mtu1024':>14}{'soft mtu4096':>14}{'tcp (python)':>14}")
    for label, key in rows:
        print(
            f"{label:<24}"
            + "".join(f"{res[k][key]:>14.2f}" for k in ("soft1024", "soft4096", "tcp"))
        )
    s, t = res["soft1024"], res["tcp"]
    print(f"targets: 64 B WRITE p50 <= 50 us, 1 MiB READ >= 1 Gbit/s; hardware RoCE ~1 us. retransmits: {s['stats'].get('retransmits', 0)}")  # fmt: skip
    ratio = s["write64_p50_us"] / t["write64_p50_us"]
    print(f"result: write64_p50_us={s['write64_p50_us']:.1f} read1m_gbps={s['read1m_gbps']:.3f} ratio_vs_tcp={ratio:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
