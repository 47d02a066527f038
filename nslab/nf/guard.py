"""Keep the kernel's own IP stack off an NF's interfaces.

An NF that owns its addresses in user space (napt answering for 10.0.0.1 and
100.0.0.1) breaks when the kernel also has those addresses: the kernel
answers ARP and pings a second time, and sends TCP resets for the NAPT's
translated ports, which have no socket. The guard adds nftables rules in the
NF's namespace that drop IPv4/IPv6 and ARP from those interfaces before the
kernel stack sees them. Raw sockets (the NF's FromDevice) see frames before
netfilter, so the NF still receives everything. The rules live in tables
named after the process and are removed on exit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


class KernelGuard:
    def __init__(self, interfaces: list[str], tag: str = "nf"):
        self.interfaces = sorted(set(interfaces))
        self.table = f"nslab_{tag}_{os.getpid()}"
        self.active = False

    def _nft(self, text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nft", "-f", "-"], input=text, capture_output=True, text=True, timeout=10
        )

    def __enter__(self) -> KernelGuard:
        if not shutil.which("nft"):
            print(
                "warning: nft not found; the kernel stack stays on the NF's interfaces",
                file=sys.stderr,
            )
            return self
        ifs = ", ".join(f'"{i}"' for i in self.interfaces)
        rules = (
            f"table inet {self.table} {{\n"
            f"  chain pre {{ type filter hook prerouting priority -300; policy accept;"
            f" iifname {{ {ifs} }} drop; }}\n}}\n"
            f"table arp {self.table} {{\n"
            f"  chain in {{ type filter hook input priority -300; policy accept;"
            f" iifname {{ {ifs} }} drop; }}\n}}\n"
        )
        r = self._nft(rules)
        if r.returncode != 0:
            print(
                f"warning: could not install the kernel guard: {r.stderr.strip()}", file=sys.stderr
            )
        else:
            self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self._nft(f"delete table inet {self.table}\ndelete table arp {self.table}\n")
            self.active = False
