"""A faulty L2 forwarder for RoCEv2 tests and benchmarks (there is no netem
in this kernel): it bridges two interfaces of a middle namespace with packet
sockets and, for UDP port 4791 frames only, drops, duplicates and reorders
them with a seeded random generator. Everything else (ARP, ...) passes.

    ip netns exec M python -m nslab.rdma.lossy IF1 IF2 --drop 0.05 --dup 0.02 --reorder 0.02

It prints one JSON line of counters when it gets SIGTERM or after --seconds."""

from __future__ import annotations

import argparse
import json
import random
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ROCE = 4791


def is_roce(frame: bytes) -> bool:
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return False
    ihl = (frame[14] & 0x0F) * 4
    u = 14 + ihl
    return len(frame) >= u + 8 and ROCE in (int.from_bytes(frame[u : u + 2], "big"), int.from_bytes(frame[u + 2 : u + 4], "big"))  # fmt: skip


def run(if1: str, if2: str, drop: float, dup: float, reorder: float, seed: int, seconds: float) -> dict:  # fmt: skip
    socks = {}
    for name in (if1, if2):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((name, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        socks[name] = s
    other = {socks[if1]: socks[if2], socks[if2]: socks[if1]}
    rnd = random.Random(seed)
    held: dict[socket.socket, bytes] = {}
    n = {"forwarded": 0, "dropped": 0, "duplicated": 0, "reordered": 0}
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *a: stop.__setitem__(0, True))
    end = time.monotonic() + seconds
    while not stop[0] and time.monotonic() < end:
        # a held frame waits for the next one at most 1 ms: reordering, not a 50 ms delay
        ready, _, _ = select.select(list(other), [], [], 0.001 if held else 0.05)
        for s in ready:
            try:
                frame, addr = s.recvfrom(65535)
            except InterruptedError:
                continue
            if addr[2] == PACKET_OUTGOING:
                continue  # our own transmission, seen again
            out = other[s]
            if is_roce(frame):
                r = rnd.random()
                if r < drop:
                    n["dropped"] += 1
                    continue
                if r < drop + reorder and out not in held:
                    held[out] = frame  # goes out after the next frame
                    n["reordered"] += 1
                    continue
                if r < drop + reorder + dup:
                    out.send(frame)
                    n["duplicated"] += 1
            out.send(frame)
            n["forwarded"] += 1
            late = held.pop(out, None)
            if late is not None:
                out.send(late)
        if not ready:  # idle: release what is held (a reordered last packet)
            for out, late in list(held.items()):
                out.send(late)
                del held[out]
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nslab.rdma.lossy", description=__doc__.split("\n\n")[0])  # fmt: skip
    ap.add_argument("if1")
    ap.add_argument("if2")
    ap.add_argument("--drop", type=float, default=0.05)
    ap.add_argument("--dup", type=float, default=0.02)
    ap.add_argument("--reorder", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=300)
    a = ap.parse_args(argv)
    print("forwarding", flush=True)
    print(json.dumps(run(a.if1, a.if2, a.drop, a.dup, a.reorder, a.seed, a.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
