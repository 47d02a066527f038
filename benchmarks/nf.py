"""Packets per second of a pass-through NF built with nslab's toolkit vs the
kernel's own forwarding (a Linux bridge), on the same veth setup:

    src (eth0) --veth-- mid (eth0 | eth1) --veth-- dst (eth0)

A sender in `src` blasts frames of one size with sendmmsg (batches of 256)
for a few seconds; what `mid` forwards is counted at `dst` (rx_packets of its
eth0). `mid` runs either the toolkit pass-through NF
(nslab/nf/configs/passthrough.click, one Python process) or a kernel bridge.
Frames go to a unicast MAC nobody owns, so `dst` drops them right after
counting and the bridge floods them like the NF forwards them.

    sudo .venv/bin/python benchmarks/nf.py [--seconds 3] [--sizes 64,1500]

Prints a table; the last line ends with `pps=<toolkit pps> ratio=<toolkit/kernel>`
(64-byte frames). Namespaces are named tnf-bench-*-<id> and removed at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nslab.nf.netns import NetnsSet  # noqa: E402
from nslab.process import interrupt_on_signals  # noqa: E402
from nslab.wait import WaitTimeout, wait_until  # noqa: E402

CONFIG = ROOT / "nslab/nf/configs/passthrough.click"
BATCH = 256


def frame(size: int) -> bytes:
    """An Ethernet/IPv4/UDP frame of `size` bytes (IPv4 packet = size - 14), to a MAC nobody owns."""
    import struct

    from nslab.nf.packet import inet_checksum

    ip_len = size - 14
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        ip_len,
        0,
        0,
        64,
        17,
        0,
        bytes([10, 9, 0, 1]),
        bytes([10, 9, 0, 2]),
    )
    ip = ip[:10] + inet_checksum(ip).to_bytes(2, "big") + ip[12:]
    udp = struct.pack("!HHHH", 9, 9, ip_len - 20, 0)
    eth = bytes.fromhex("02000000009902000000000a0800")
    return (eth + ip + udp).ljust(size, b"\x00")


def sender(iface: str, size: int, seconds: float) -> None:
    """Runs inside `src`: sendmmsg the same frame as fast as possible; prints JSON."""
    from nslab.nf.rawsock import _LIBC, _IOVec, _MMsgHdr

    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((iface, 0))
    buf = ctypes.create_string_buffer(frame(size), size)
    iov = _IOVec(ctypes.addressof(buf), size)
    msgs = (_MMsgHdr * BATCH)()
    for m in msgs:
        m.hdr.iov = ctypes.pointer(iov)
        m.hdr.iovlen = 1
    sent, t0 = 0, time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        n = _LIBC.sendmmsg(s.fileno(), msgs, BATCH, 0)
        if n > 0:
            sent += n
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}))


def rx_packets(n: NetnsSet, ns: str, iface: str = "eth0") -> int:
    return int(n.exec(ns, ["cat", f"/sys/class/net/{iface}/statistics/rx_packets"]).stdout)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    n: NetnsSet, src: str, dst: str, size: int, seconds: float, pid: int | None = None
) -> dict:
    before = rx_packets(n, dst)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.monotonic()
    r = n.exec(
        src,
        [sys.executable, __file__, "--_send", "eth0", str(size), str(seconds)],
        timeout=seconds + 30,
    )
    # frames still queued in mid are forwarded within a moment; count them too
    time.sleep(0.3)
    got = rx_packets(n, dst) - before
    cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
    sent = json.loads(r.stdout)
    elapsed = sent["seconds"]
    return {
        "sent_pps": sent["sent"] / elapsed,
        "fwd_pps": got / elapsed,
        "cpu_s": cpu,
        "pps_per_cpu_s": got / cpu if cpu > 0 else 0.0,
        "wall": time.monotonic() - t0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="sending time per measurement")
    ap.add_argument("--sizes", default="64,1500", help="frame sizes in bytes, comma-separated")
    ap.add_argument("--_send", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    interrupt_on_signals()  # a TERM removes the namespaces too
    if a._send:
        sender(a._send[0], int(a._send[1]), float(a._send[2]))
        return 0
    if os.geteuid() != 0:
        print("benchmarks/nf.py needs root (namespaces, raw sockets)", file=sys.stderr)
        return 1
    sizes = [int(x) for x in a.sizes.split(",")]
    rows = []
    with NetnsSet("tnf") as n, tempfile.TemporaryDirectory(prefix="tnf-bench-") as tmpdir:
        src, mid, dst = n.ns("bsrc"), n.ns("bmid"), n.ns("bdst")
        n.veth(src, "eth0", mid, "eth0")
        n.veth(mid, "eth1", dst, "eth0")
        for size in sizes:
            # kernel: a Linux bridge in mid
            n.bridge(mid, "br0", ["eth0", "eth1"])
            k = measure(n, src, dst, size, a.seconds)
            n.exec(mid, ["ip", "link", "del", "br0"])
            for i in ("eth0", "eth1"):
                n.exec(mid, ["ip", "link", "set", i, "up"])
            # toolkit: the pass-through NF in mid
            nf = n.popen(
                mid,
                [
                    sys.executable,
                    "-m",
                    "nslab.nf",
                    str(CONFIG),
                    "a=eth0",
                    "b=eth1",
                    "--name",
                    "bench",
                    "--report",
                    str(Path(tmpdir) / "bench.report"),
                ],
                cwd=ROOT,
            )
            base = rx_packets(n, dst)
            probe = frame(64)
            try:
                wait_until(
                    lambda probe=probe, base=base: (
                        _probe(n, src, probe) and rx_packets(n, dst) > base
                    ),
                    timeout=10,
                    what="the NF to forward a probe frame",
                )
            except WaitTimeout as exc:
                print(exc, n.stop(nf), file=sys.stderr)
                return 1
            t = measure(n, src, dst, size, a.seconds, pid=nf.pid)
            n.stop(nf)
            rows.append((size, k, t))
    print("pps forwarded from src to dst through mid (sender: offered load in that run)")
    print(
        f"{'frame':>6} {'sender':>10} {'kernel':>10} {'sender':>10} {'toolkit':>10} "
        f"{'NF cpu s':>9} {'pps/cpu s':>10} {'ratio':>7}"
    )
    for size, k, t in rows:
        ratio = t["fwd_pps"] / k["fwd_pps"] if k["fwd_pps"] else 0.0
        print(
            f"{size:>6} {k['sent_pps']:>10,.0f} {k['fwd_pps']:>10,.0f} "
            f"{t['sent_pps']:>10,.0f} {t['fwd_pps']:>10,.0f} {t['cpu_s']:>9.2f} "
            f"{t['pps_per_cpu_s']:>10,.0f} {ratio:>7.3f}"
        )
    print("pps/cpu s: packets the NF forwarded per second of CPU it got (its one-core")
    print("capacity, less sensitive to other load on the machine than the wall-clock rate).")
    print("kernel = Linux bridge; it forwards as fast as the sender offers, so its")
    print("column is a lower bound and the ratio an upper bound on the toolkit's share.")
    size, k, t = rows[0]
    ratio = t["fwd_pps"] / k["fwd_pps"] if k["fwd_pps"] else 0.0
    print(
        f"pass-through NF, {size}-byte frames, one core: pps={t['fwd_pps']:.0f} ratio={ratio:.3f}"
    )
    return 0


def _probe(n: NetnsSet, src: str, data: bytes) -> bool:
    n.exec(
        src,
        [
            sys.executable,
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,0); "
            f"s.bind(('eth0',0)); s.send(bytes.fromhex('{data.hex()}'))",
        ],
    )
    time.sleep(0.05)
    return True


if __name__ == "__main__":
    sys.exit(main())
