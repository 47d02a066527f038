"""`bridge`: a Linux bridge (plain L2 learning, no controller)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from nslab.kinds import Builder, Kind, register

if TYPE_CHECKING:
    from nslab.engine.state import LabState
    from nslab.topo.model import Node


@register
class Bridge(Kind):
    name = "bridge"
    role = "switch"
    root_namespace = True
    allowed_keys = frozenset({"interfaces"})
    description = "switch: Linux bridge (plain L2)"
    graph_style = {"shape": "ellipse", "style": "filled", "fillcolor": "#d9f99d"}

    def create(self, nodes: list[Node], b: Builder) -> None:
        from nslab.topo.names import bridge_name, root_ifname

        b.progress(f"creating {len(nodes)} Linux bridges")
        # Once Docker runs, br_netfilter sends bridged frames through iptables'
        # FORWARD chain (policy DROP): switch it off for the lab's lifetime.
        for key in (
            "bridge-nf-call-iptables",
            "bridge-nf-call-ip6tables",
            "bridge-nf-call-arptables",
        ):
            b.acquire_sysctl(f"net.bridge.{key}", "0")
        names = [bridge_name(b.lab, n.name) for n in nodes]
        b.state.linux_bridges += names
        b.state.save()
        lines = []
        for n, br in zip(nodes, names, strict=True):
            lines += [f"link add name {br} type bridge", f"link set {br} up"]
            for iface in b.ofports(n.name):
                lines.append(f"link set {root_ifname(b.lab, n.name, iface)} master {br}")
        b.ip_batch(lines)

    def teardown(self, state: LabState) -> None:
        stale = [n for n in state.linux_bridges if Path("/sys/class/net", n).exists()]
        if stale:
            subprocess.run(
                ["ip", "-force", "-batch", "-"],
                input="".join(f"link del {n}\n" for n in stale),
                capture_output=True,
                text=True,
            )
