"""`ovs-bridge`: an Open vSwitch bridge, OpenFlow-controlled when the topology has a controller."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nslab.kinds import Kind, register

if TYPE_CHECKING:
    from nslab.topo.model import Node, Topology

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
