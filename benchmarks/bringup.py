#!/usr/bin/env python3
"""Bring-up and teardown time: nslab vs a plain Mininet script, same topology, one run.

The topology is a two-level tree: one core switch, S edge switches (OVS,
standalone, userspace datapath where the kernel has no OVS module), H hosts
spread over the edges. Both sides build, start and stop it; we time up
(build + start, until hosts are configured) and down (stop + cleanup).

    sudo .venv/bin/python benchmarks/bringup.py --hosts 100 --repeat 3
    sudo .venv/bin/python benchmarks/bringup.py --hosts 1000 --switches 21 --repeat 1

The last line ends with ratio=<nslab total / plain Mininet total> (medians).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from nslab import host as hostcaps


def tree_yaml(name: str, hosts: int, edges: int) -> str:
    lines = [f"name: {name}", "topology:", "  nodes:", "    c1: {kind: ovs-bridge}"]
    lines += [f"    e{i}: {{kind: ovs-bridge}}" for i in range(1, edges + 1)]
    lines += [f"    h{i}: {{kind: linux}}" for i in range(1, hosts + 1)]
    lines.append("  links:")
    lines += [f'    - endpoints: ["e{i}:eth0", "c1:eth{i}"]' for i in range(1, edges + 1)]
    per_edge: dict[int, int] = {}
    for i in range(1, hosts + 1):
        e = (i - 1) % edges + 1
        per_edge[e] = per_edge.get(e, 0) + 1
        lines.append(f'    - endpoints: ["h{i}:eth0", "e{e}:eth{per_edge[e]}"]')
    return "\n".join(lines) + "\n"


def run_nslab(hosts: int, edges: int) -> tuple[float, float]:
    from nslab.engine import up

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "tree.yaml")
        path.write_text(tree_yaml("bench", hosts, edges))
        t0 = time.monotonic()
        lab = up(str(path), progress=None)
        t1 = time.monotonic()
        lab.down()
        t2 = time.monotonic()
    return t1 - t0, t2 - t1


def run_mininet(hosts: int, edges: int) -> tuple[float, float]:
    """What a student's plain Mininet script does."""
    from functools import partial

    from mininet.net import Mininet
    from mininet.node import OVSSwitch
    from mininet.topo import Topo

    class Tree(Topo):
        def build(self) -> None:
            core = self.addSwitch("s1", dpid="1")
            edge = [self.addSwitch(f"s{i + 2}", dpid=str(i + 2)) for i in range(edges)]
            for e in edge:
                self.addLink(e, core)
            for i in range(hosts):
                h = self.addHost(f"h{i + 1}")
                self.addLink(h, edge[i % edges])

    datapath = "kernel" if hostcaps.ovs_kernel_datapath() else "user"
    switch = partial(OVSSwitch, datapath=datapath, failMode="standalone")
    t0 = time.monotonic()
    net = Mininet(topo=Tree(), switch=switch, controller=None, autoSetMacs=True)
    net.start()
    t1 = time.monotonic()
    net.stop()
    t2 = time.monotonic()
    return t1 - t0, t2 - t1


def settle(timeout: float = 180) -> float:
    """Wait until the kernel has finished tearing down: it destroys network
    namespaces asynchronously, holding the RTNL lock in long stretches, so an
    `ip` command that needs RTNL is slow until it is done. Returns the seconds
    waited (part of the real cost of a teardown, reported separately)."""
    t0 = time.monotonic()
    fast = 0
    while fast < 5 and time.monotonic() - t0 < timeout:
        t = time.monotonic()
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                "name",
                "nslabprobe",
                "type",
                "veth",
                "peer",
                "name",
                "nslabprobe1",
            ],
            check=False,
        )
        subprocess.run(["ip", "link", "del", "nslabprobe"], check=False)
        fast = fast + 1 if time.monotonic() - t < 0.05 else 0
        time.sleep(0.1)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--switches", type=int, default=21, help="1 core + N-1 edge switches")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    edges = max(1, args.switches - 1)
    results: dict[str, list[tuple[float, float]]] = {"nslab": [], "mininet": []}
    settles: dict[str, list[float]] = {"nslab": [], "mininet": []}
    for i in range(args.repeat):
        for side, fn in (("nslab", run_nslab), ("mininet", run_mininet)):
            settle()
            up_s, down_s = fn(args.hosts, edges)
            results[side].append((up_s, down_s))
            settles[side].append(settle())
            print(
                f"run {i + 1}/{args.repeat} {side:<8} up {up_s:7.2f} s  down {down_s:7.2f} s  "
                f"(kernel busy {settles[side][-1]:.1f} s more)",
                flush=True,
            )
    med = {
        side: (statistics.median(u for u, _ in r), statistics.median(d for _, d in r))
        for side, r in results.items()
    }
    print(
        f"\n{'side':<9}{'up (s)':>9}{'down (s)':>10}{'total (s)':>11}   "
        f"(medians of {args.repeat}, {args.hosts} hosts, {args.switches} switches)"
    )
    for side, (u, d) in med.items():
        print(
            f"{side:<9}{u:9.2f}{d:10.2f}{u + d:11.2f}   "
            f"then the kernel finished tearing down {statistics.median(settles[side]):.1f} s later"
        )
    ratio = sum(med["nslab"]) / sum(med["mininet"])
    print(
        f"up_ratio={med['nslab'][0] / med['mininet'][0]:.2f} "
        f"down_ratio={med['nslab'][1] / med['mininet'][1]:.2f} ratio={ratio:.2f}"
    )


if __name__ == "__main__":
    main()
