"""perftest-style RDMA measurements (ib_write_lat, ib_read_bw, ...) over the
verbs API: `nslab rdma perf TEST [SERVER]`.

Like perftest, the server is started without an address and the client with
the server's address; they meet on a TCP port (default 18515), exchange QP
numbers, PSNs, rkeys and addresses, run the test and both print the results.
The client decides sizes and iterations and sends them to the server.

Latency tests: write_lat and send_lat are ping-pongs (the server echoes) and
report half the round trip, as perftest does; read_lat reports the full READ
round trip. Bandwidth tests keep `depth` operations in flight; MB/sec is
2^20 bytes per second, as in perftest.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import nslab.rdma.enums as e
from nslab.errors import NslabError
from nslab.rdma import cm, provider_info
from nslab.rdma import soft as v

TESTS = ("write_lat", "read_lat", "send_lat", "write_bw", "read_bw", "send_bw")
DEFAULT_PORT = 18515
SWEEP_MAX = 1 << 23
LAT_COLUMNS = " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] "  # fmt: skip
BW_COLUMNS = " #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]"
LINE = "-" * 87
TITLES = {
    "write_lat": "RDMA_Write Latency Test",
    "read_lat": "RDMA_Read Latency Test",
    "send_lat": "Send Latency Test",
    "write_bw": "RDMA_Write BW Test",
    "read_bw": "RDMA_Read BW Test",
    "send_bw": "Send BW Test",
}


@dataclass
class Options:
    test: str
    server: str | None = None
    size: int = 2
    iters: int | None = None
    sweep: bool = False
    port: int = DEFAULT_PORT
    mtu: int = 1024
    depth: int = 32
    timeout: float = 60.0
    bind: str = "0.0.0.0"
    datapath: str | None = None  # the soft provider's: "native", "python", None = the default
    out: Callable[[str], None] = field(default=lambda s: print(s, flush=True))

    def sizes(self) -> list[int]:
        if not self.sweep:
            return [self.size]
        return [1 << k for k in range(1, 24) if (1 << k) <= SWEEP_MAX]

    def iterations(self, size: int) -> int:
        n = self.iters or 1000
        if self.sweep:  # keep a sweep bounded in time: at most ~16 MiB moved per size
            n = max(10, min(n, (16 << 20) // size))
        return n


def _fail(msg: str) -> NslabError:
    return NslabError(f"rdma perf: {msg}")


def _wait(cq, n: int, what: str, timeout: float = 10.0, busy: bool = True) -> list:
    wcs = cq.poll_wait(n, timeout=timeout, busy=busy)
    if len(wcs) < n:
        raise _fail(f"{what}: {len(wcs)} of {n} completions within {timeout:.0f} s (peer gone?)")
    for wc in wcs:
        if wc.status != e.IBV_WC_SUCCESS:
            raise _fail(f"{what}: completion error {e.wc_status_str(wc.status)}")
    return wcs


def _lat_row(size: int, samples_us: list[float]) -> str:
    s = sorted(samples_us)
    n = len(s)

    def pct(p: float) -> float:
        return s[min(n - 1, int(p * n))]

    sd = statistics.pstdev(s) if n > 1 else 0.0
    return f" {size:<6d} {n:<11d} {s[0]:<14.2f} {s[-1]:<14.2f} {statistics.median(s):<16.2f} {statistics.fmean(s):<14.2f} {sd:<15.2f} {pct(0.99):<22.2f} {pct(0.999):<.2f}"  # fmt: skip


def _bw_row(size: int, n: int, stamps: list[float], t0: float) -> str:
    total = stamps[-1] - t0 if stamps else 0.0
    avg = n * size / total / (1 << 20) if total > 0 else 0.0
    k = max(1, len(stamps) // 10)
    peak = avg
    for i in range(0, len(stamps) - k, k):
        dt = stamps[i + k] - stamps[i]
        if dt > 0:
            peak = max(peak, k * size / dt / (1 << 20))
    rate = n / total / 1e6 if total > 0 else 0.0
    return f" {size:<10d} {n:<14d} {peak:<18.2f} {avg:<20.2f} {rate:.6f}"


def _header(o: Options, ep: cm.Endpoint, role: str) -> list[str]:
    info = provider_info()
    lat = o.test.endswith("_lat")
    return [
        LINE,
        f"                    {TITLES[o.test]}",
        f" Provider        : {getattr(ep.ctx, 'provider', 'soft')}, data path {getattr(ep.ctx, 'datapath', '-')} ({info['detail']})",
        " Connection type : RC          Using SRQ      : OFF",
        f" Role            : {role}",
        f" Mtu             : {ep.mtu}[B]",
        f" local address: QPN {ep.qp.qp_num:#08x} UDP port {ep.ctx.port}",
        f" remote address: QPN {int(ep.peer['qpn']):#08x} IP {ep.peer_ip} UDP port {ep.peer['port']}",
        LINE,
        LAT_COLUMNS if lat else BW_COLUMNS,
    ]


class _Bench:
    """What both sides share: a context, one big MR, an endpoint."""

    def __init__(self, o: Options):
        self.o = o
        self.ctx = v.Context("perf", addr=o.bind, native=None if o.datapath is None else o.datapath == "native")  # fmt: skip
        self.pd = v.PD(self.ctx)
        self.mr: v.MR | None = None
        self.ep: cm.Endpoint | None = None

    def make_mr(self, size: int) -> v.MR:
        """One MR, two halves: what we send from, and what the peer writes into."""
        access = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE | e.IBV_ACCESS_REMOTE_READ
        self.half = max(64, size)
        self.mr = v.MR(self.pd, 2 * self.half, access)
        return self.mr

    def post_recvs(self, qp, n: int) -> None:
        mr, half = self.mr, self.half
        qp.post_recv([v.RecvWR(i, 1, [v.SGE(mr.buf + half, half, mr.lkey)]) for i in range(n)])

    def close(self) -> None:
        if self.ep is not None:
            self.ep.close()
        self.ctx.close()


def run(o: Options) -> int:
    if o.test not in TESTS:
        raise _fail(f"unknown test {o.test!r}; one of {', '.join(TESTS)}")
    if o.mtu not in (256, 512, 1024, 2048, 4096):
        raise _fail(f"--mtu {o.mtu}: one of 256, 512, 1024, 2048, 4096")
    if o.size < 1:
        raise _fail(f"-s {o.size}: the message size must be at least 1 byte")
    b = _Bench(o)
    try:
        return _client(b) if o.server else _server(b)
    finally:
        b.close()


def _client(b: _Bench) -> int:
    o = b.o
    sizes = o.sizes()
    plan = [[s, o.iterations(s)] for s in sizes]
    mr = b.make_mr(max(sizes))
    send = o.test.startswith("send")
    mine = {"test": o.test, "plan": plan, "depth": o.depth, "rkey": mr.rkey, "addr": mr.buf}
    ep = b.ep = cm.connect(
        b.ctx, b.pd, o.server, o.port, private=mine,
        mtu=o.mtu, timeout=o.timeout, depth=max(o.depth, 64),
        on_qp=(lambda qp: b.post_recvs(qp, 1)) if o.test == "send_lat" else None,
    )  # fmt: skip
    rkey, raddr, rlen = ep.private["rkey"], ep.private["addr"], ep.private["length"]
    if rlen < 2 * max(sizes):
        raise _fail(f"server buffer is {rlen} bytes, smaller than the {max(sizes)}-byte messages")
    lines = _header(o, ep, "client")
    for line in lines:
        o.out(line)
    rows = []
    for size, n in plan:
        cm.recv_json(ep.sock, o.timeout)  # server ready for this size
        if o.test == "write_lat":
            row = _lat_row(size, _pingpong_write(b, size, n, rkey, raddr, initiator=True))
        elif o.test == "send_lat":
            row = _lat_row(size, _pingpong_send(b, size, n, initiator=True))
        elif o.test == "read_lat":
            row = _lat_row(size, _read_lat(b, size, n, rkey, raddr))
        else:
            op = e.IBV_WR_SEND if send else (e.IBV_WR_RDMA_READ if o.test == "read_bw" else e.IBV_WR_RDMA_WRITE)  # fmt: skip
            t0, stamps = _bw(b, op, size, n, rkey, raddr)
            row = _bw_row(size, n, stamps, t0)
        o.out(row)
        rows.append(row)
        cm.send_json(ep.sock, {"row": row})
    o.out(LINE)
    cm.send_json(ep.sock, {"bye": True})
    return 0


def _server(b: _Bench) -> int:
    o = b.o
    state: dict = {}

    def private(p: dict) -> dict:
        if p.get("test") != o.test:
            raise _fail(f"client runs {p.get('test')!r} but this server runs {o.test!r}; start both with the same test")  # fmt: skip
        biggest = max(s for s, _ in p["plan"])
        mr = b.make_mr(biggest)
        state["plan"] = p["plan"]
        state["depth"] = int(p.get("depth", 32))
        return {"rkey": mr.rkey, "addr": mr.buf, "length": mr.length}

    o.out("************************************\n* Waiting for client to connect... *\n************************************")  # fmt: skip
    with cm.Listener(o.port, o.bind) as lst:
        first = {"send_lat": 1, "send_bw": 128}.get(o.test, 0)
        ep = b.ep = lst.accept(
            b.ctx, b.pd, private=private, mtu=o.mtu, timeout=o.timeout, depth=256,
            on_qp=(lambda qp: b.post_recvs(qp, first)) if first else None,
        )  # fmt: skip
    for line in _header(o, ep, "server"):
        o.out(line)
    for size, n in state["plan"]:
        cm.send_json(ep.sock, {"ready": size})
        if o.test == "write_lat":
            _pingpong_write(b, size, n, ep.private.get("rkey"), None, initiator=False)
        elif o.test == "send_lat":
            _pingpong_send(b, size, n, initiator=False)
        elif o.test == "send_bw":
            _sink_sends(b, size, n)
        msg = cm.recv_json(ep.sock, o.timeout + 60)
        o.out(msg.get("row", ""))
    o.out(LINE)
    cm.recv_json(ep.sock, o.timeout)
    return 0


def _spin_until(mv, idx: int, want: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    n = 0
    while mv[idx] != want:
        time.sleep(0)  # hand the GIL to the NIC thread that is writing our memory
        n += 1
        if n & 0xFFF == 0 and time.monotonic() > end:
            raise _fail(f"peer did not write within {timeout:.0f} s")


def _pingpong_write(b: _Bench, size: int, n: int, rkey, raddr, initiator: bool) -> list[float]:
    """perftest write_lat: each side writes the peer's buffer; the last byte
    carries the iteration number, which the peer polls for in its memory."""
    ep, mr, half = b.ep, b.mr, b.half
    if not initiator:  # the server writes into the client's buffer
        rkey, raddr = ep.private["rkey"], ep.private["addr"]
    raddr += half  # into the peer's receiving half
    qp, cq = ep.qp, ep.cq
    out: list[float] = []
    mv = mr.mv
    sge = [v.SGE(mr.buf, size, mr.lkey)]
    seen = half + size - 1  # the byte the peer's write lands last
    pending = 0
    for i in range(n):
        tag = (i % 250) + 1
        t0 = time.perf_counter()
        if not initiator:
            _spin_until(mv, seen, tag, b.o.timeout)
        mv[size - 1] = tag  # our outgoing payload carries the tag too
        wr = v.SendWR(i, e.IBV_WR_RDMA_WRITE, sg=sge, send_flags=e.IBV_SEND_SIGNALED if i % 16 == 15 else 0)  # fmt: skip
        wr.set_wr_rdma(rkey, raddr)
        qp.post_send(wr)
        if i % 16 == 15:
            pending += 1
        if initiator:
            _spin_until(mv, seen, tag, b.o.timeout)
            out.append((time.perf_counter() - t0) * 1e6 / 2)
        if pending:
            pending -= cq.poll(pending)[0]
    if pending:
        _wait(cq, pending, "write_lat")
    return out


def _pingpong_send(b: _Bench, size: int, n: int, initiator: bool) -> list[float]:
    ep, mr = b.ep, b.mr
    qp, cq = ep.qp, ep.cq
    out: list[float] = []
    sge = [v.SGE(mr.buf, size, mr.lkey)]
    for i in range(n):
        t0 = time.perf_counter()
        if not initiator:
            _wait_recv(cq, b.o.timeout)
            b.post_recvs(qp, 1)
        qp.post_send(v.SendWR(i, e.IBV_WR_SEND, sg=sge, send_flags=e.IBV_SEND_SIGNALED))
        if initiator:
            _wait_recv(cq, b.o.timeout)
            b.post_recvs(qp, 1)
            out.append((time.perf_counter() - t0) * 1e6 / 2)
    return out


def _wait_recv(cq, timeout: float) -> None:
    """Wait for the next RECV completion (send completions are skipped)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for wc in cq.poll_wait(1, timeout=max(0.001, end - time.monotonic()), busy=True):
            if wc.status != e.IBV_WC_SUCCESS:
                raise _fail(f"completion error {e.wc_status_str(wc.status)}")
            if wc.opcode & e.IBV_WC_RECV:
                return
    raise _fail(f"no message from the peer within {timeout:.0f} s")


def _read_lat(b: _Bench, size: int, n: int, rkey: int, raddr: int) -> list[float]:
    ep, mr = b.ep, b.mr
    out = []
    sge = [v.SGE(mr.buf + b.half, size, mr.lkey)]
    for i in range(n):
        wr = v.SendWR(i, e.IBV_WR_RDMA_READ, sg=sge)
        wr.set_wr_rdma(rkey, raddr)
        t0 = time.perf_counter()
        ep.qp.post_send(wr)
        _wait(ep.cq, 1, "read_lat")
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def _bw(b: _Bench, op: int, size: int, n: int, rkey: int, raddr: int) -> tuple[float, list[float]]:
    ep, mr = b.ep, b.mr
    depth = b.o.depth
    off = b.half if op == e.IBV_WR_RDMA_READ else 0
    if op != e.IBV_WR_SEND:
        raddr += 0 if op == e.IBV_WR_RDMA_READ else b.half
    sge = [v.SGE(mr.buf + off, size, mr.lkey)]
    stamps: list[float] = []
    posted = done = 0
    t0 = time.perf_counter()
    end = time.monotonic() + b.o.timeout
    while done < n:
        if posted < n and posted - done < depth:
            batch = []
            while posted < n and posted - done + len(batch) < depth:
                wr = v.SendWR(posted, op, sg=sge, send_flags=e.IBV_SEND_SIGNALED)
                if op != e.IBV_WR_SEND:
                    wr.set_wr_rdma(rkey, raddr)
                batch.append(wr)
                posted += 1
            ep.qp.post_send(batch)
        wcs = ep.cq.poll_wait(1, timeout=0.5, busy=False)
        now = time.perf_counter()
        for wc in wcs + ep.cq.poll(depth)[1]:
            if wc.status != e.IBV_WC_SUCCESS:
                raise _fail(f"completion error {e.wc_status_str(wc.status)}")
            done += 1
            stamps.append(now)
        if time.monotonic() > end:
            raise _fail(f"{done} of {n} operations completed within {b.o.timeout:.0f} s")
    return t0, stamps


def _sink_sends(b: _Bench, size: int, n: int) -> None:
    """send_bw server: keep receives posted until n messages arrived."""
    ep = b.ep
    got = 0
    end = time.monotonic() + b.o.timeout
    while got < n:
        wcs = ep.cq.poll_wait(1, timeout=0.5)
        wcs += ep.cq.poll(256)[1]
        for wc in wcs:
            if wc.status != e.IBV_WC_SUCCESS:
                raise _fail(f"completion error {e.wc_status_str(wc.status)}")
            if wc.opcode & e.IBV_WC_RECV:
                got += 1
                b.post_recvs(ep.qp, 1)
        if time.monotonic() > end:
            raise _fail(f"received {got} of {n} messages within {b.o.timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - `python -m nslab.rdma.perf`
    from nslab.cli import main as cli_main

    return cli_main(["rdma", "perf", *(argv if argv is not None else sys.argv[1:])])
