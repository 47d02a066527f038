"""`linux`: a host in its own network namespace (with `image`: a container, later)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nslab.kinds import Kind, register

if TYPE_CHECKING:
    from nslab.topo.model import Node, Topology


@register
class Linux(Kind):
    name = "linux"
    role = "host"
    # gpus: nslab's GPU request for container hosts (containerlab has no word for it)
    allowed_keys = frozenset({"ip", "gateway", "interfaces", "gpus"})
    description = "host: a network namespace (a container when `image` is set)"
    graph_style = {"shape": "box", "style": "rounded,filled", "fillcolor": "#dbeafe"}

    def validate(self, node: Node, topo: Topology) -> list[str]:
        if not node.image:
            return []
        from nslab import containers  # only container hosts need it

        return containers.check_node(node)
