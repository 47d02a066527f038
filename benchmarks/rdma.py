"""The soft RoCEv2 provider (native data path, and the Python one with
--datapath python) vs a Python TCP request/response and kernel TCP
(iperf3), between two network namespaces (a veth pair) this script creates
and removes.

    sudo .venv/bin/python benchmarks/rdma.py [--runs 10] [--iters 2000] [--mb 30] [--faults [--fault-runs 3]] [--no-pin] [--gro]

Each run measures, with the responder in its own process in namespace B and
the requester here (in namespace A), side by side in the same run:
  - 64-byte RDMA WRITE and READ latency (post -> completion, one at a time),
  - 1 MiB RDMA READ and WRITE bandwidth (one operation at a time),
    at path MTU 1024 and 4096 (jumbo link),
  - the same work done by a TCP server in Python (op, offset, length [+ data]);
    its 64-byte latency samples are taken in chunks that alternate with the
    RDMA ones, between the 1 MiB operations, so that a run's p50 and the
    ratio cover the whole run and see the same load of a shared machine,
  - kernel TCP throughput with iperf3 (1 s) on the same veth,
  - the responder application's CPU time (getrusage of its main thread: the
    data path runs in the provider's thread, not the application's).
The requester runs on one CPU and the responders (RDMA and TCP) on another,
as perftest is run (taskset): on a 2-CPU VM the scheduler otherwise puts
both busy-polling sides on one CPU in some runs, which doubles their
latency (measured 8.6-8.9 us in five runs of ten, 11-24 us in the others).
--no-pin leaves the placement to the scheduler. --gro turns receive offload on
at both veth ends: the RoCE receivers then get UDP GRO batches (1 MiB READ
at MTU 1024 4.7 -> 7.0 Gbit/s; iperf3 gains nothing) but each small packet
takes the veth's NAPI path (64 B WRITE p50 9.6 -> 11.8 us), so it is off.
It prints min/median/max over the runs. --faults adds --fault-runs runs
through a middle namespace that drops 5 %, duplicates 2 % and reorders 2 % of
UDP 4791 frames (nslab.rdma.lossy), each timed against the same forwarder
without faults, and their faulty/clean ratios as min/median/max: of one
operation at a time, and of 2000 4 KiB READs 16 posted at a time.
The last line is, for MTU 4096 (the line before it for MTU 1024), medians:
`write64_p50_us=<n> read1m_gbps=<n> ratio_vs_tcp=<n> spread=<n> read_vs_tcp=<n>`
with ratio_vs_tcp = 64-byte WRITE p50 / Python TCP write p50 (same run),
spread = max/median of the runs' WRITE p50, read_vs_tcp = 1 MiB READ
Gbit/s / iperf3 Gbit/s (same run).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nslab.rdma.enums as e  # noqa: E402
from nslab.errors import NslabError  # noqa: E402
from nslab.process import interrupt_on_signals  # noqa: E402
from nslab.rdma import cm  # noqa: E402
from nslab.rdma import soft as v  # noqa: E402
from nslab.rdma.netns import make_chain, make_pair, netns  # noqa: E402

MR_SIZE = 4 << 20
SOFT_PORT, TCP_PORT, IPERF_PORT = 18601, 18602, 18603
REQ = struct.Struct("!cQI")  # op (R/W), offset, length
FULL = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_WRITE


# ----------------------------------------------------------------- responders (namespace B)
def serve_soft(addr: str, native: bool) -> None:
    ctx = v.Context("bench-srv", addr=addr, native=native)
    pd = v.PD(ctx)
    mr = v.MR(pd, MR_SIZE, FULL)
    with cm.Listener(SOFT_PORT, addr) as lst:
        while True:
            ep = lst.accept(ctx, pd, private={"rkey": mr.rkey, "addr": mr.buf}, mtu=4096, timeout=600)  # fmt: skip
            ep.sock.settimeout(None)
            r0, p0 = resource.getrusage(resource.RUSAGE_THREAD), resource.getrusage(resource.RUSAGE_SELF)  # fmt: skip
            while ep.sock.recv(1):  # the client closes the TCP channel when done
                pass
            r1, p1 = resource.getrusage(resource.RUSAGE_THREAD), resource.getrusage(resource.RUSAGE_SELF)  # fmt: skip
            cpu = {"app_cpu_ms": 1e3 * (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime), "process_cpu_ms": 1e3 * (p1.ru_utime + p1.ru_stime - p0.ru_utime - p0.ru_stime)}  # fmt: skip
            print(json.dumps(cpu), flush=True)
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
class TcpClient:
    """The Python TCP request/response peer of serve_tcp."""

    def __init__(self, pair):
        with netns(pair.a):
            self.s = socket.create_connection((pair.b_ip, TCP_PORT), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.mv = memoryview(bytearray(1 << 20))

    def one(self, op: bytes, size: int) -> float:
        s, mv = self.s, self.mv
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

    def close(self) -> None:
        self.s.close()


def soft_run(pair, mtu: int, iters: int, mb: int, native: bool = True, tcp: TcpClient | None = None) -> dict:  # fmt: skip
    with netns(pair.a):
        ctx = v.Context("bench-cli", addr=pair.a_ip, native=native)
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
            tcp_op = b"W" if name == "write" else b"R"
            for _ in range(50):
                one(op, 64, True)  # warm up
                if tcp:
                    tcp.one(tcp_op, 64)
            lat: list[float] = []
            tlat: list[float] = []
            t = []
            chunk = max(1, iters // mb)
            for _ in range(mb):  # latency chunks between the 1 MiB operations
                t.append(one(op, 1 << 20, False))
                lat += [one(op, 64, True) * 1e6 for _ in range(chunk)]
                if tcp:  # a chunk of its own: not behind the RDMA responder's spinning
                    tlat += [tcp.one(tcp_op, 64) * 1e6 for _ in range(chunk)]
            for key, xs in (("", lat), ("tcp_", tlat)):
                if xs:
                    xs.sort()
                    out[f"{key}{name}64_p50_us"] = statistics.median(xs)
                    out[f"{key}{name}64_p99_us"] = xs[int(0.99 * len(xs))]
            out[f"{name}1m_gbps"] = 8 * (1 << 20) * mb / sum(t) / 1e9
        out["stats"] = dict(ctx.stats)
    finally:
        ep.close()
        ctx.close()
    return out


def tcp_bandwidth(tcp: TcpClient, mb: int) -> dict:
    out: dict = {}
    for name, op in (("write", b"W"), ("read", b"R")):
        t = [tcp.one(op, 1 << 20) for _ in range(mb)]
        out[f"{name}1m_gbps"] = 8 * (1 << 20) * mb / sum(t) / 1e9
    return out


def iperf_gbps(pair) -> float:
    """Kernel TCP on the same veth: iperf3 for 1 s."""
    srv = subprocess.Popen(pair.exec_cmd("b", ["iperf3", "-s", "-1", "-p", str(IPERF_PORT), "-B", pair.b_ip]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(50):
            r = subprocess.run(pair.exec_cmd("a", ["iperf3", "-c", pair.b_ip, "-p", str(IPERF_PORT), "-t", "1", "-J"]), capture_output=True, text=True, timeout=30)  # fmt: skip
            end = json.loads(r.stdout or "{}").get("end", {}) if r.returncode == 0 else {}
            if "sum_received" in end:
                return end["sum_received"]["bits_per_second"] / 1e9
            time.sleep(0.1)  # the server is not listening yet
        raise RuntimeError(f"iperf3 failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    finally:
        srv.kill()
        srv.wait()


def pipelined_reads(ep, mr, n: int = 2000, size: int = 4096, depth: int = 16) -> None:
    """n READs of `size` bytes, `depth` posted at a time (a key-value client's
    gets): the QP keeps max_rd_atomic (4) of them on the wire."""
    posted = done = 0
    while done < n:
        while posted < n and posted - done < depth:
            wr = v.SendWR(posted, e.IBV_WR_RDMA_READ, sg=[v.SGE(mr.buf + (posted % depth) * size, size, mr.lkey)], send_flags=e.IBV_SEND_SIGNALED)  # fmt: skip
            wr.set_wr_rdma(ep.private["rkey"], ep.private["addr"] + (posted % 64) * size)
            ep.qp.post_send(wr)
            posted += 1
        wcs = ep.cq.poll_wait(depth, timeout=30, busy=True)
        if not wcs or any(wc.status != 0 for wc in wcs):
            raise RuntimeError(f"pipelined READ failed: {wcs}")
        done += len(wcs)


def fault_run(native: bool, mb: int) -> dict:
    """Wall time of a fixed workload (WRITE/READ 1 MiB x mb/3, 64 B WRITE x 300)
    through the lossy forwarder with faults vs without; and, timed on its own,
    2000 4 KiB READs 16 posted at a time."""
    out = {}
    for name, args in (("clean", ["--drop", "0", "--dup", "0", "--reorder", "0"]), ("faulty", ["--drop", "0.05", "--dup", "0.02", "--reorder", "0.02"])):  # fmt: skip
        chain = make_chain(f"trdmaf{os.getpid() % 1000}", subnet="10.79.6")
        procs = []
        try:
            procs.append(subprocess.Popen(["ip", "netns", "exec", chain.m, sys.executable, "-m", "nslab.rdma.lossy", chain.m_a, chain.m_b, *args], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))))  # fmt: skip
            procs[-1].stdout.readline()
            me = [sys.executable, str(Path(__file__).resolve())]
            procs.append(subprocess.Popen(chain.exec_cmd("b", [*me, "--serve", "soft", "--addr", chain.b_ip] + ([] if native else ["--datapath", "python"])), stdout=subprocess.DEVNULL))  # fmt: skip
            with netns(chain.a):
                ctx = v.Context("bench-f", addr=chain.a_ip, native=native)
                pd = v.PD(ctx)
                mr = v.MR(pd, MR_SIZE, FULL)
                for attempt in range(100):  # the server starts slowly on a loaded machine
                    try:
                        ep = cm.connect(ctx, pd, chain.b_ip, SOFT_PORT, mtu=1024)
                        break
                    except NslabError:
                        if attempt == 99:
                            raise
                        time.sleep(0.2)
            t0 = time.perf_counter()
            for _ in range(max(1, mb // 3)):
                for op, size in ((e.IBV_WR_RDMA_WRITE, 1 << 20), (e.IBV_WR_RDMA_READ, 1 << 20)):
                    wr = v.SendWR(1, op, sg=[v.SGE(mr.buf, size, mr.lkey)])
                    wr.set_wr_rdma(ep.private["rkey"], ep.private["addr"])
                    ep.qp.post_send(wr)
                    wcs = ep.cq.poll_wait(1, timeout=30)
                    if not wcs or wcs[0].status != 0:
                        raise RuntimeError(f"{name}: op failed: {wcs}")
            for _ in range(300):
                wr = v.SendWR(1, e.IBV_WR_RDMA_WRITE, sg=[v.SGE(mr.buf, 64, mr.lkey)])
                wr.set_wr_rdma(ep.private["rkey"], ep.private["addr"])
                ep.qp.post_send(wr)
                if ep.cq.poll_wait(1, timeout=30, busy=True)[0].status != 0:
                    raise RuntimeError(f"{name}: 64 B write failed")
            out[name] = time.perf_counter() - t0
            st = collections.Counter(ctx.stats)  # a copy: the Python data path's is live
            for k in ("retransmits", "timeouts", "read_gaps"):
                out[f"{name}_{k}"] = st[k]
            t1 = time.perf_counter()
            try:
                pipelined_reads(ep, mr)
            except RuntimeError as exc:
                raise RuntimeError(f"{name}: {exc}; stats {dict(ctx.stats)}") from None
            out[name + "_reads"] = time.perf_counter() - t1
            for k in ("timeouts", "read_gaps"):
                out[f"{name}_reads_{k}"] = ctx.stats[k] - st[k]
            ep.close()
            ctx.close()
        finally:
            for p in procs:
                p.kill()
                p.wait()
            chain.remove()
    out["ratio"] = out["faulty"] / out["clean"]
    out["reads_ratio"] = out["faulty_reads"] / out["clean_reads"]
    return out


def _mmm(xs: list[float]) -> str:
    return f"{min(xs):9.2f} {statistics.median(xs):9.2f} {max(xs):9.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--runs", type=int, default=10, help="runs, reported as min/median/max (default 10)")  # fmt: skip
    ap.add_argument("--iters", type=int, default=2000, help="latency samples per op (default 2000)")
    ap.add_argument("--mb", type=int, default=30, help="1 MiB operations per bandwidth run (default 30)")  # fmt: skip
    ap.add_argument("--datapath", choices=["native", "python"], default="native", help="the soft provider's data path (default native)")  # fmt: skip
    ap.add_argument("--faults", action="store_true", help="also time runs through a lossy forwarder (5 %% drop)")  # fmt: skip
    ap.add_argument("--fault-runs", type=int, default=3, help="runs with --faults, reported as min/median/max (default 3)")  # fmt: skip
    ap.add_argument("--no-pin", action="store_true", help="let the scheduler place requester and responders (default: each on a CPU of its own, as perftest is run)")  # fmt: skip
    ap.add_argument("--gro", action="store_true", help="turn the veth's receive offload on (RoCE and TCP alike): bulk gains, a 64 B round trip loses ~2 us")  # fmt: skip
    ap.add_argument("--serve", choices=["soft", "tcp"], help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--addr", help=argparse.SUPPRESS)
    args = ap.parse_args()
    interrupt_on_signals()  # a TERM removes the namespaces too
    nat = args.datapath == "native"
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.serve == "soft":
        serve_soft(args.addr, nat)
        return 0
    if args.serve == "tcp":
        serve_tcp(args.addr)
        return 0
    if os.geteuid() != 0:
        print("benchmarks/rdma.py needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    if not shutil.which("iperf3"):
        print("benchmarks/rdma.py needs iperf3 (scripts/provision.sh installs it)", file=sys.stderr)
        return 1
    cpus = sorted(os.sched_getaffinity(0))
    pin = (cpus[0], cpus[1]) if len(cpus) >= 2 and not args.no_pin else None
    pair = make_pair(f"trdmab{os.getpid() % 1000}", mtu=9000, subnet="10.79.4", gro=args.gro)
    procs = []
    runs: list[dict] = []
    try:
        me = [sys.executable, str(Path(__file__).resolve())]
        for kind in ("soft", "tcp"):
            procs.append(subprocess.Popen(pair.exec_cmd("b", [*me, "--serve", kind, "--addr", pair.b_ip, "--datapath", args.datapath] + (["--cpu", str(pin[1])] if pin else [])), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
        time.sleep(1.5)
        print(f"# soft RoCEv2 ({args.datapath} data path) vs TCP between namespaces {pair.a} and {pair.b} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}), {args.runs} runs, {f'requester on CPU {pin[0]}, responders on CPU {pin[1]}' if pin else 'not pinned'}", flush=True)  # fmt: skip
        for i in range(args.runs):
            # pinned for the latency runs only: iperf3 and the fault runs are not
            if pin:
                os.sched_setaffinity(0, {pin[0]})
            tcp = TcpClient(pair)
            try:
                res = {"soft1024": soft_run(pair, 1024, args.iters, args.mb, nat, tcp)}
                res["cpu1024"] = json.loads(procs[0].stdout.readline())
                res["soft4096"] = soft_run(pair, 4096, args.iters, args.mb, nat, tcp)
                res["cpu4096"] = json.loads(procs[0].stdout.readline())
                s = res["soft4096"]
                # the TCP RPC's latency: its samples interleaved with the MTU 4096 run's
                res["tcp"] = {k[4:]: v for k, v in s.items() if k.startswith("tcp_")}
                res["tcp"].update(tcp_bandwidth(tcp, args.mb))
            finally:
                tcp.close()
                os.sched_setaffinity(0, cpus)
            res["iperf_gbps"] = iperf_gbps(pair)
            res["load"] = os.getloadavg()[0]
            runs.append(res)
            print(f"run {i + 1} (load {res['load']:.1f}): write64 p50 {s['write64_p50_us']:.1f} us, read 1 MiB {s['read1m_gbps']:.2f} Gbit/s, tcp write64 p50 {res['tcp']['write64_p50_us']:.1f} us, iperf3 {res['iperf_gbps']:.2f} Gbit/s, responder app CPU {res['cpu4096']['app_cpu_ms']:.1f} ms of {res['cpu4096']['process_cpu_ms']:.0f} ms, requester timeouts {s['stats'].get('timeouts', 0)}", flush=True)  # fmt: skip
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
    print(f"{'measure (min median max)':<26}{'soft mtu1024':>30}{'soft mtu4096':>30}{'tcp (python)':>30}")  # fmt: skip
    for label, key in rows:
        print(f"{label:<26}" + "".join(f"{_mmm([r[k][key] for r in runs]):>30}" for k in ("soft1024", "soft4096", "tcp")))  # fmt: skip
    print(f"{'iperf3 [Gbit/s]':<26}{_mmm([r['iperf_gbps'] for r in runs]):>90}")
    print(f"{'load average (1 min)':<26}{_mmm([r['load'] for r in runs]):>90}")
    print(f"{'responder app CPU [ms]':<26}{_mmm([r['cpu1024']['app_cpu_ms'] for r in runs]):>30}{_mmm([r['cpu4096']['app_cpu_ms'] for r in runs]):>30}")  # fmt: skip
    print("targets: 64 B WRITE p50 <= 10 us and <= 0.5x TCP; spread <= 1.5; 1 MiB READ >= 5 Gbit/s and >= 0.5x iperf3; hardware RoCE ~1 us")  # fmt: skip
    if args.faults:
        fr, rr = [], []
        for i in range(args.fault_runs):
            f = fault_run(nat, args.mb)
            fr.append(f["ratio"])
            rr.append(f["reads_ratio"])
            print(f"faults run {i + 1} (5 % drop, 2 % dup, 2 % reorder; load {os.getloadavg()[0]:.1f}): clean {f['clean']:.2f} s, faulty {f['faulty']:.2f} s ({f['faulty_retransmits']} retransmits, {f['faulty_timeouts']} timeouts, {f['faulty_read_gaps']} READ holes asked for again): faulty/clean = {f['ratio']:.2f}")  # fmt: skip
            print(f"  2000 4 KiB READs, 16 posted: clean {f['clean_reads']:.2f} s, faulty {f['faulty_reads']:.2f} s ({f['faulty_reads_timeouts']} timeouts, {f['faulty_reads_read_gaps']} READ holes asked for again): faulty/clean = {f['reads_ratio']:.2f}")  # fmt: skip
        print(f"{'faulty/clean (target <= 5)':<26}{_mmm(fr):>90}")
        print(f"{'4 KiB READs faulty/clean':<26}{_mmm(rr):>90}")

    def line(k: str) -> str:
        w50 = [r[k]["write64_p50_us"] for r in runs]
        ratio = [r[k]["write64_p50_us"] / r["tcp"]["write64_p50_us"] for r in runs]
        rd = [r[k]["read1m_gbps"] for r in runs]
        rvt = [r[k]["read1m_gbps"] / r["iperf_gbps"] for r in runs]
        med = statistics.median
        return f"write64_p50_us={med(w50):.1f} read1m_gbps={med(rd):.3f} ratio_vs_tcp={med(ratio):.2f} spread={max(w50) / med(w50):.2f} read_vs_tcp={med(rvt):.2f}"  # fmt: skip

    print(f"result mtu1024: {line('soft1024')}")
    print(f"result: {line('soft4096')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
