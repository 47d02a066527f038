"""The topology model: what a topology file means, independent of how it is built.

A topology file (containerlab layout plus nslab's extensions) is parsed and
validated into a `Topology`; engines realise it. Every element remembers where
it came from (`Origin`) so that errors can name the file, line and key.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

# Linux limits interface names to IFNAMSIZ-1 characters.
IFNAMSIZ = 15


@dataclass(frozen=True)
class Origin:
    """Where a value was written: file, line (1-based) and a dotted key path."""

    file: str = "<memory>"
    line: int | None = None
    key: str = ""

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}" if self.key else where


@dataclass
class LinkParams:
    """Per-link shaping, with Mininet TCLink semantics (bw in Mbit/s, delay
    and jitter as tc strings such as '5ms', loss in percent, max_queue in
    packets). None means 'not shaped'."""

    bw: float | None = None
    delay: str | None = None
    jitter: str | None = None
    loss: float | None = None
    max_queue: int | None = None

    def needs_netem(self) -> bool:
        return bool(self.delay or self.jitter or self.loss)

    def is_shaped(self) -> bool:
        return self.bw is not None or self.max_queue is not None or self.needs_netem()

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class Interface:
    """One end of a link as seen by its node."""

    name: str  # name inside the node (e.g. eth0)
    node: str
    ips: list[ipaddress.IPv4Interface] = field(default_factory=list)
    mac: str | None = None
    origin: Origin = field(default_factory=Origin)


@dataclass
class Endpoint:
    node: str
    iface: str

    def __str__(self) -> str:
        return f"{self.node}:{self.iface}"


@dataclass
class Link:
    a: Endpoint
    b: Endpoint
    params: LinkParams = field(default_factory=LinkParams)
    origin: Origin = field(default_factory=Origin)
    # containerlab link keys nslab keeps but does not act on (mtu, labels, ...)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def endpoints(self) -> tuple[Endpoint, Endpoint]:
        return (self.a, self.b)

    def __str__(self) -> str:
        return f"{self.a} <-> {self.b}"


@dataclass
class Node:
    """A node of any kind. Kind-specific settings live in `config` (validated
    by the kind's own module in nslab.kinds), so new kinds (containers, pods,
    RDMA endpoints) add modules, not special cases here."""

    name: str
    kind: str
    interfaces: dict[str, Interface] = field(default_factory=dict)
    gateway: ipaddress.IPv4Address | None = None
    dpid: int | None = None
    image: str | None = None
    exec: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    origin: Origin = field(default_factory=Origin)

    @property
    def ips(self) -> list[ipaddress.IPv4Interface]:
        return [ip for intf in self.interfaces.values() for ip in intf.ips]

    @property
    def ip(self) -> ipaddress.IPv4Interface | None:
        ips = self.ips
        return ips[0] if ips else None


# What fabric.json tells the controller (nslab.controller.fabric.VIEWS).
FABRIC_VIEWS = ("full", "switches-only")


@dataclass
class Controller:
    """The OpenFlow controller of the topology's ovs-bridge nodes."""

    app: str  # path or module of an os-ken/Ryu app
    port: int | None = None  # None: pick a free port at `up`
    # what the engine's fabric.json tells it: "full", or "switches-only" (no hosts)
    fabric: str = "full"
    origin: Origin = field(default_factory=Origin)


@dataclass
class Topology:
    name: str
    nodes: dict[str, Node] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    controller: Controller | None = None
    source: str = "<memory>"  # file the topology was read from
    params: dict[str, Any] = field(default_factory=dict)  # template parameters

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def neighbours(self, name: str) -> list[tuple[Endpoint, Endpoint]]:
        """(local, remote) endpoint pairs of the links at node `name`."""
        out = []
        for link in self.links:
            if link.a.node == name:
                out.append((link.a, link.b))
            elif link.b.node == name:
                out.append((link.b, link.a))
        return out
