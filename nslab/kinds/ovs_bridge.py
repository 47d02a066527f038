"""`ovs-bridge`: an Open vSwitch bridge, OpenFlow-controlled when the topology has a controller."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import TYPE_CHECKING

from nslab.kinds import Builder, Kind, register

if TYPE_CHECKING:
    from nslab.engine.state import LabState
    from nslab.topo.model import Node, Topology

LABEL = "nslab-lab"  # external-ids key naming the lab that owns a bridge

MAX_DPID = 2**64 - 1


@register
class OvsBridge(Kind):
    name = "ovs-bridge"
    role = "switch"
    root_namespace = True
    openflow = True
    allowed_keys = frozenset({"dpid", "interfaces"})
    description = "switch: Open vSwitch bridge (OpenFlow when a controller is set)"
    graph_style = {"shape": "hexagon", "style": "filled", "fillcolor": "#fde68a"}

    def validate(self, node: Node, topo: Topology) -> list[str]:
        if node.dpid is not None and not 1 <= node.dpid <= MAX_DPID:
            return [f"dpid: {node.dpid} is out of range — use 1 to 2^64-1"]
        return []

    def prepare(self, nodes: list[Node], progress) -> None:
        from nslab import host as hostcaps
        from nslab.errors import CapabilityError

        if not hostcaps.ovs_running():
            raise CapabilityError("Open vSwitch is not running: run `sudo make provision`")

    def peer_needs_offloads_off(self, b: Builder) -> bool:
        # OVS's userspace datapath does not finish checksums or segments that
        # the kernel left to the NIC: without this, TCP through it stalls.
        return b.userspace_ovs

    def create(self, nodes: list[Node], b: Builder) -> None:
        from nslab.topo.names import bridge_name

        b.progress(f"creating {len(nodes)} Open vSwitch bridges")
        b.state.ovs_bridges += [bridge_name(b.lab, n.name) for n in nodes]
        b.allocate_controller_port()
        b.state.save()
        b.run(["ovs-vsctl", "--timeout=60"] + self._ovs_args(nodes, b))

    def _ovs_args(self, nodes: list[Node], b: Builder) -> list[str]:
        """All bridges and ports as one ovsdb transaction."""
        from nslab.topo.names import bridge_name, root_ifname

        looped = b.has_switch_loop()
        args: list[str] = []
        for n in nodes:
            br = bridge_name(b.lab, n.name)
            ports = b.ofports(n.name)
            b.state.ofports[n.name] = ports
            settings = [
                f"other-config:datapath-id={n.dpid or 0:016x}",
                "other-config:disable-in-band=true",
                f"external-ids:{LABEL}={b.lab}",
            ]
            if b.userspace_ovs:
                settings.append("datapath_type=netdev")
            if b.state.controller_port:
                settings += ["fail_mode=secure", "protocols=OpenFlow10,OpenFlow13"]
            elif looped:
                settings.append("rstp_enable=true")  # standalone on a looped fabric: RSTP, no storm
            args += ["--", "add-br", br, "--", "set", "bridge", br, *settings]
            for iface, port in ports.items():
                dev = root_ifname(b.lab, n.name, iface)
                args += ["--", "add-port", br, dev]
                args += ["--", "set", "interface", dev, f"ofport_request={port}"]
            if b.state.controller_port:
                args += ["--", "set-controller", br, f"tcp:127.0.0.1:{b.state.controller_port}"]
        return args

    def teardown(self, state: LabState) -> None:
        bridges = sorted(
            set(state.ovs_bridges) | {br for br, lab in bridge_labs().items() if lab == state.name}
        )
        if bridges and shutil.which("ovs-vsctl"):
            # --no-wait: ovsdb drops the bridges at once; ovs-vswitchd catches up
            # on its own (waiting for it is most of the teardown time otherwise).
            args = ["ovs-vsctl", "--timeout=60", "--no-wait"]
            for br in bridges:
                args += ["--", "--if-exists", "del-br", br]
            subprocess.run(args, capture_output=True)

    def owners(self) -> set[str]:
        return set(bridge_labs().values())


def bridge_labs() -> dict[str, str]:
    """Every OVS bridge labelled external-ids:nslab-lab, with its lab (one query)."""
    if not shutil.which("ovs-vsctl"):
        return {}
    r = subprocess.run(
        [
            "ovs-vsctl",
            "--timeout=10",
            "--format=json",
            "--columns=name,external_ids",
            "list",
            "bridge",
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0 or not r.stdout:
        return {}
    out = {}
    for name, ext in json.loads(r.stdout)["data"]:
        labels = dict(ext[1]) if ext and ext[0] == "map" else {}
        if LABEL in labels:
            out[name] = labels[LABEL]
    return out
