"""Kernel bypass on veth, side by side in one run (64-byte frames):

    src (eth0) --veth-- mid (eth0 | eth1) --veth-- dst (eth0)

1. drop in mid: an XDP program (native, counts in a map, XDP_DROP) vs an
   nftables drop (netdev ingress) vs the NF toolkit over AF_PACKET
   (FromDevice -> Discard);
2. forward mid eth0 -> eth1: XDP_REDIRECT (bpf_redirect) vs a Linux bridge;
3. pass-through NF (nslab/nf/configs/passthrough.click): --io afxdp vs
   --io afpacket.

The sender (benchmarks/nf.py's: sendmmsg batches of 256 on AF_PACKET) blasts
for a few seconds. Dropped frames are counted by the dropper (the XDP map,
mid's rx_packets for nftables, the NF's report for the toolkit); forwarded
ones at dst. pps per CPU-second: for the Python NFs, per second of the NF
process's CPU; for the kernel paths, per second of softirq time of the whole
machine during the run (/proc/stat), which other load on a shared machine
inflates: a lower bound.

    sudo .venv/bin/python benchmarks/xdp.py [--seconds 3]

Last line: `xdp_drop_pps=<n> afxdp_pps=<n> afxdp_vs_afpacket=<n>`.
veth numbers are not NIC numbers: see docs/nf-toolkit.md (AF_XDP backend).
Namespaces are named txdp-*-<id> and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import nf as nfbench  # noqa: E402  (benchmarks/nf.py: sender, rx counters)

from nslab.nf.netns import NetnsSet, wait_for  # noqa: E402
from nslab.process import interrupt_on_signals  # noqa: E402
from nslab.xdp import loader  # noqa: E402

COUNT_DROP = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64); } seen SEC(".maps");
SEC("xdp") int count_drop(struct xdp_md *ctx) {
    __u32 k = 0; __u64 *c = bpf_map_lookup_elem(&seen, &k);
    if (c) *c += 1;
    return XDP_DROP;
}
SEC("xdp") int pass(struct xdp_md *ctx) { return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";
"""

REDIRECT = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int fwd(struct xdp_md *ctx) { return bpf_redirect(TARGET, 0); }
char LICENSE[] SEC("license") = "GPL";
"""


def softirq_s() -> float:
    with open("/proc/stat") as f:
        cpu = f.readline().split()
    return int(cpu[7]) / os.sysconf("SC_CLK_TCK")


def blast(n: NetnsSet, src: str, seconds: float) -> float:
    """Send for `seconds`; returns the sender's wall time."""
    r = n.exec(
        src,
        [sys.executable, nfbench.__file__, "--_send", "eth0", "64", str(seconds)],
        timeout=seconds + 30,
    )
    return json.loads(r.stdout)["seconds"]


def kernel_case(n, src, count, seconds) -> dict:
    """pps of a kernel path; `count()` reads its counter."""
    c0, s0 = count(), softirq_s()
    el = blast(n, src, seconds)
    time.sleep(0.3)
    got, soft = count() - c0, softirq_s() - s0
    return {"pps": got / el, "pps_per_cpu_s": got / soft if soft > 0 else 0.0}


def nf_case(n, src, dst, mid, config, io, seconds, count_dst=True, tmp=".") -> dict:
    report = Path(tmp) / f"bench-{io}.report"
    p = n.popen(
        mid,
        [sys.executable, "-m", "nslab.nf", str(config), "a=eth0", "b=eth1", "--name", "bench"]
        + ["--report", str(report), "--io", io],
        cwd=ROOT,
    )
    base = nfbench.rx_packets(n, dst)
    probe = nfbench.frame(64)
    if count_dst:
        ok = wait_for(
            lambda: nfbench._probe(n, src, probe) and nfbench.rx_packets(n, dst) > base, 10
        )
    else:
        time.sleep(2.0)
        ok = p.poll() is None
    if not ok:
        print(f"the NF (--io {io}) did not start:", n.stop(p), file=sys.stderr)
        raise SystemExit(1)
    base, cpu0 = nfbench.rx_packets(n, dst), nfbench.cpu_seconds(p.pid)
    el = blast(n, src, seconds)
    time.sleep(0.3)
    cpu = nfbench.cpu_seconds(p.pid) - cpu0
    fwd = nfbench.rx_packets(n, dst) - base
    n.stop(p)
    if not count_dst:  # a dropper: what the NF took in, from its own report
        rep = json.loads(report.read_text()) if report.exists() else {}
        fwd = rep.get("interfaces", {}).get("eth0", {}).get("in_packets", 0)
    return {"pps": fwd / el, "pps_per_cpu_s": fwd / cpu if cpu > 0 else 0.0}


def build(tmp: Path, name: str, code: str) -> Path:
    src, obj = tmp / f"{name}.c", tmp / f"{name}.o"
    src.write_text(code)
    subprocess.run(loader.compile_argv(str(src), str(obj)), check=True, capture_output=True)
    return obj


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="sending time per measurement")
    a = ap.parse_args()
    interrupt_on_signals()  # a TERM removes the namespaces too
    if os.geteuid() != 0:
        print("benchmarks/xdp.py needs root (namespaces, BPF)", file=sys.stderr)
        return 1
    rows: dict[str, dict] = {}
    with NetnsSet("txdp") as n, tempfile.TemporaryDirectory(prefix="txdp-bench-") as tmpdir:
        tmp = Path(tmpdir)
        src, mid, dst = n.ns("bsrc"), n.ns("bmid"), n.ns("bdst")
        n.veth(src, "eth0", mid, "eth0")
        n.veth(mid, "eth1", dst, "eth0")
        drop = tmp / "drop.click"
        drop.write_text("FromDevice($a) -> Discard(all);\nFromDevice($b) -> Discard(other);\n")
        with loader.load(build(tmp, "count", COUNT_DROP)) as cobj:
            seen = cobj.map("seen")

            def xdp_count() -> int:
                return seen.u64_sum(b"\0\0\0\0")

            # 1. drops
            n.exec(mid, loader.attach_argv("eth0", cobj.pin("count_drop"), "native"))
            rows["XDP drop (native)"] = kernel_case(n, src, xdp_count, a.seconds)
            n.exec(mid, loader.detach_argv("eth0", "native"))
            rules = tmp / "drop.nft"
            rules.write_text(
                "table netdev txdp {\n chain in {\n"
                "  type filter hook ingress device eth0 priority 0;\n  counter drop\n }\n}\n"
            )
            n.exec(mid, ["nft", "-f", str(rules)])
            rows["nftables drop (ingress)"] = kernel_case(
                n, src, lambda: nfbench.rx_packets(n, mid), a.seconds
            )
            n.exec(mid, ["nft", "delete table netdev txdp"])
            rows["NF toolkit drop (AF_PACKET)"] = nf_case(
                n, src, dst, mid, drop, "afpacket", a.seconds, count_dst=False, tmp=tmp
            )
            # 2. forwarding: XDP_REDIRECT vs the bridge (dst gets an XDP_PASS
            # program: a veth only takes redirected frames with NAPI on)
            n.exec(dst, loader.attach_argv("eth0", cobj.pin("pass"), "native"))
            ifindex = json.loads(n.exec(mid, ["ip", "-j", "link", "show", "eth1"]).stdout)[0][
                "ifindex"
            ]
            code = f"#define TARGET {ifindex}\n" + REDIRECT
            with loader.load(build(tmp, "redirect", code)) as robj:
                n.exec(mid, loader.attach_argv("eth0", robj.pin("fwd"), "native"))
                rows["XDP redirect (native)"] = kernel_case(
                    n, src, lambda: nfbench.rx_packets(n, dst), a.seconds
                )
                n.exec(mid, loader.detach_argv("eth0", "native"))
            n.exec(dst, loader.detach_argv("eth0", "native"))
            n.bridge(mid, "br0", ["eth0", "eth1"])
            rows["Linux bridge"] = kernel_case(
                n, src, lambda: nfbench.rx_packets(n, dst), a.seconds
            )
            n.exec(mid, ["ip", "link", "del", "br0"])
            for i in ("eth0", "eth1"):
                n.exec(mid, ["ip", "link", "set", i, "up"])
            # 3. pass-through NFs
            for io in ("afxdp", "afpacket"):
                rows[f"NF pass-through ({io})"] = nf_case(
                    n, src, dst, mid, nfbench.CONFIG, io, a.seconds, tmp=tmp
                )
    print(f"64-byte frames on veth, {a.seconds:g} s per case")
    print(f"{'case':<30} {'pps':>12} {'pps/CPU-s':>12}")
    for name, r in rows.items():
        print(f"{name:<30} {r['pps']:>12,.0f} {r['pps_per_cpu_s']:>12,.0f}")
    print("pps/CPU-s: Python NFs per second of their process's CPU; kernel paths per second")
    print("of the machine's softirq time (other load inflates it: a lower bound).")
    print("veth is not a NIC: no DMA, no driver RX ring, one frame copy per hop; see")
    print("docs/nf-toolkit.md for what changes on a NIC with native XDP and zero-copy AF_XDP.")
    xd = rows["XDP drop (native)"]["pps"]
    ax = rows["NF pass-through (afxdp)"]["pps"]
    ap_ = rows["NF pass-through (afpacket)"]["pps"]
    print(
        f"xdp_drop_pps={xd:.0f} afxdp_pps={ax:.0f} afxdp_vs_afpacket={ax / ap_ if ap_ else 0:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
