"""Topology files -> validated model. See docs/topology-format.md.

from nslab.topo import load, list_topologies
topo = load("leaf-spine", params={"leaves": "4"}, lab_name="ls0")
"""

from nslab.topo.loader import find, list_topologies, load, load_text, parse_params, render
from nslab.topo.model import (
    Controller,
    Endpoint,
    Interface,
    Link,
    LinkParams,
    Node,
    Origin,
    Topology,
)
from nslab.topo.names import bridge_name, root_ifname

__all__ = [
    "Controller",
    "Endpoint",
    "Interface",
    "Link",
    "LinkParams",
    "Node",
    "Origin",
    "Topology",
    "bridge_name",
    "find",
    "list_topologies",
    "load",
    "load_text",
    "parse_params",
    "render",
    "root_ifname",
]
