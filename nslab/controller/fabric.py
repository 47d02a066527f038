"""What a controller app needs to know about a looped fabric, from `fabric.json`.

The engine writes `fabric.json` (path in `$NSLAB_FABRIC` and `--fabric`):

    {"lab": "ls0",
     "switches": {"sp1": {"dpid": 1, "bridge": "ls0-sp1",
                          "ports": {"1": {"iface": "eth1", "peer": "lf1:eth1",
                                          "peer_role": "switch"}}}},
     "hosts": {"h1": {"ips": ["10.0.0.1/8"], "mac": "00:00:00:00:00:01", "gateway": null,
                      "interfaces": {"eth0": {"mac": "00:00:00:00:00:01",
                                              "ips": ["10.0.0.1/8"]}}}}}

A lab may hand its controller a switches-only view instead (`"view":
"switches-only"`): no `hosts`, and edge ports without `peer`.

`Fabric` turns that into the questions a forwarding app asks:

- which ports of a switch face hosts (`host_ports`) and which face switches;
- where to flood a broadcast without looping forever (`flood_ports`: the
  host-facing ports plus the links of one spanning tree of the switch graph);
- the equal-cost next hops from one switch towards another (`next_hops`),
  and the full shortest paths (`shortest_paths`) for ECMP.

Everything is plain Python (no os-ken import) so it can be tested and used
from a student's app alike.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nslab.errors import NslabError

FABRIC_ENV = "NSLAB_FABRIC"
# "full": hosts with their interfaces and MACs, host-facing ports name their
# peer; "switches-only": no hosts, edge ports unnamed (a lab that asks students
# to learn where hosts are; topology `controller: {fabric: switches-only}`).
VIEWS = ("full", "switches-only")


@dataclass(frozen=True)
class Port:
    no: int  # OpenFlow port number
    iface: str  # interface name on the switch node (eth1)
    peer_node: str  # node at the other end of the link
    peer_iface: str
    peer_role: str  # "switch" or "host" (anything else counts as an edge port)

    @property
    def to_switch(self) -> bool:
        return self.peer_role == "switch"


@dataclass
class Switch:
    name: str
    dpid: int
    bridge: str = ""
    ports: dict[int, Port] = field(default_factory=dict)


@dataclass(frozen=True)
class Hop:
    """Leave switch `dpid` through `port`."""

    dpid: int
    port: int


class Fabric:
    """The switch graph of a lab, indexed by datapath id."""

    def __init__(self, switches: dict[str, Switch], hosts: dict[str, dict[str, Any]] | None = None):
        self.switches = switches
        self.hosts = hosts or {}
        self.view = "full"
        self._by_dpid = {s.dpid: s for s in switches.values()}
        # adjacency: dpid -> {local port: (peer dpid, peer port)}
        self.adj: dict[int, dict[int, tuple[int, int]]] = {d: {} for d in self._by_dpid}
        self.unresolved: list[str] = []  # switch-role peers not found in the fabric
        for sw in switches.values():
            for port in sw.ports.values():
                if not port.to_switch:
                    continue
                peer = switches.get(port.peer_node)
                peer_port = None
                if peer is not None:
                    peer_port = next(
                        (p.no for p in peer.ports.values() if p.iface == port.peer_iface), None
                    )
                if peer is None or peer_port is None:
                    # A peer outside this controller's fabric (e.g. a standalone
                    # bridge) is an edge as far as forwarding here is concerned.
                    self.unresolved.append(
                        f"{sw.name}:{port.iface} -> {port.peer_node}:{port.peer_iface}"
                    )
                    continue
                self.adj[sw.dpid][port.no] = (peer.dpid, peer_port)
        self._dist: dict[int, dict[int, int]] = {d: self._bfs(d) for d in self._by_dpid}
        self._tree = self._spanning_tree()

    # ------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Fabric:
        """Read fabric.json; NslabError naming the file and key when it is malformed."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise NslabError(f"fabric: cannot read {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise NslabError(f"fabric: {path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_env(cls) -> Fabric | None:
        """The fabric named by $NSLAB_FABRIC, or None when it is unset."""
        path = os.environ.get(FABRIC_ENV)
        return cls.load(path) if path else None

    @classmethod
    def from_dict(cls, data: Any, source: str = "fabric.json") -> Fabric:
        def bad(key: str, what: str) -> NslabError:
            return NslabError(f"fabric: {source}: {key}: {what}")

        if not isinstance(data, dict) or not isinstance(data.get("switches"), dict):
            raise bad("switches", "missing or not an object of switch name -> switch")
        switches: dict[str, Switch] = {}
        seen_dpids: dict[int, str] = {}
        for name, sw in data["switches"].items():
            key = f"switches.{name}"
            if not isinstance(sw, dict):
                raise bad(key, "not an object")
            dpid = sw.get("dpid")
            if dpid is None:
                # A Linux bridge: not OpenFlow, so not ours to program. Ports
                # that face it count as edge ports (see Fabric.unresolved).
                continue
            if not isinstance(dpid, int) or dpid <= 0:
                raise bad(f"{key}.dpid", f"must be a positive integer, got {dpid!r}")
            if dpid in seen_dpids:
                raise bad(f"{key}.dpid", f"{dpid} is also the dpid of {seen_dpids[dpid]}")
            seen_dpids[dpid] = name
            ports: dict[int, Port] = {}
            for no, p in (sw.get("ports") or {}).items():
                pkey = f"{key}.ports.{no}"
                try:
                    port_no = int(no)
                except ValueError:
                    raise bad(pkey, "port numbers must be integers") from None
                if not isinstance(p, dict):
                    raise bad(pkey, "not an object")
                role = str(p.get("peer_role", "host"))
                peer = p.get("peer")
                # A switches-only view names no host: an edge port may lack "peer".
                if (peer is not None or role == "switch") and ":" not in str(peer or ""):
                    raise bad(pkey, 'needs "peer": "node:iface"')
                peer_node, peer_iface = str(peer).split(":", 1) if peer else ("", "")
                ports[port_no] = Port(
                    no=port_no,
                    iface=str(p.get("iface", f"eth{port_no}")),
                    peer_node=peer_node,
                    peer_iface=peer_iface,
                    peer_role=role,
                )
            switches[name] = Switch(name, dpid, str(sw.get("bridge", "")), ports)
        hosts = data.get("hosts") or {}
        if not isinstance(hosts, dict):
            raise bad("hosts", "not an object of host name -> host")
        view = data.get("view", "full")
        if view not in VIEWS:
            raise bad("view", f"must be one of {', '.join(VIEWS)}, got {view!r}")
        fabric = cls(switches, hosts)
        fabric.view = view
        return fabric

    # ------------------------------------------------------------ queries

    def switch(self, dpid: int) -> Switch | None:
        return self._by_dpid.get(dpid)

    def knows(self, dpid: int) -> bool:
        return dpid in self._by_dpid

    @property
    def dpids(self) -> list[int]:
        return sorted(self._by_dpid)

    def host_ports(self, dpid: int) -> list[int]:
        """Ports of `dpid` that do not lead to another switch (hosts, NFs, routers)."""
        sw = self._by_dpid.get(dpid)
        return sorted(p for p in sw.ports if p not in self.adj[dpid]) if sw else []

    def switch_ports(self, dpid: int) -> list[int]:
        return sorted(self.adj.get(dpid, {}))

    def is_host_port(self, dpid: int, port: int) -> bool:
        return self.knows(dpid) and port not in self.adj[dpid]

    def tree_ports(self, dpid: int) -> list[int]:
        """Switch-facing ports of `dpid` that belong to the spanning tree."""
        return sorted(p for p in self.adj.get(dpid, {}) if (dpid, p) in self._tree)

    def flood_ports(self, dpid: int, in_port: int | None = None) -> list[int]:
        """Where a broadcast arriving at `dpid` on `in_port` must go: every
        host-facing port and every spanning-tree port, except where it came in.
        Following this on every switch delivers one copy to each host and
        never loops."""
        ports = set(self.host_ports(dpid)) | set(self.tree_ports(dpid))
        ports.discard(in_port)
        return sorted(ports)

    def distance(self, src: int, dst: int) -> int | None:
        """Switch hops from `src` to `dst` (None: not connected)."""
        return self._dist.get(src, {}).get(dst)

    def next_hops(self, src: int, dst: int) -> list[int]:
        """The ports of `src` that start a shortest path to `dst` (equal-cost
        choices, sorted; empty when src == dst or unreachable)."""
        d = self.distance(src, dst)
        if not d:
            return []
        out = []
        for port, (peer, _) in sorted(self.adj[src].items()):
            if self._dist[peer].get(dst) == d - 1:
                out.append(port)
        return out

    def shortest_paths(self, src: int, dst: int, limit: int = 64) -> list[list[Hop]]:
        """All shortest paths from switch `src` to switch `dst` as lists of hops
        (at most `limit`). A path to itself is one empty path."""
        if src == dst:
            return [[]]
        paths: list[list[Hop]] = []

        def walk(node: int, acc: list[Hop]) -> None:
            if len(paths) >= limit:
                return
            if node == dst:
                paths.append(list(acc))
                return
            for port in self.next_hops(node, dst):
                acc.append(Hop(node, port))
                walk(self.adj[node][port][0], acc)
                acc.pop()

        walk(src, [])
        return paths

    def attachments(self) -> dict[str, Hop]:
        """MAC -> (switch, port) of every host interface plugged straight into
        an OpenFlow switch of this fabric (empty in a switches-only view)."""
        out: dict[str, Hop] = {}
        for sw in self.switches.values():
            for port in sw.ports.values():
                host = self.hosts.get(port.peer_node)
                if port.to_switch or not isinstance(host, dict):
                    continue
                ifaces = host.get("interfaces") or {}
                mac = (ifaces.get(port.peer_iface) or {}).get("mac") or (
                    host.get("mac") if not ifaces else None  # files written before "interfaces"
                )
                if isinstance(mac, str) and mac:
                    out[mac.lower()] = Hop(sw.dpid, port.no)
        return out

    def peer(self, dpid: int, port: int) -> tuple[int, int] | None:
        """(peer dpid, peer port) across an inter-switch link, else None."""
        return self.adj.get(dpid, {}).get(port)

    # ------------------------------------------------------------ internals

    def _bfs(self, src: int) -> dict[int, int]:
        dist = {src: 0}
        queue = deque([src])
        while queue:
            node = queue.popleft()
            for peer, _ in self.adj[node].values():
                if peer not in dist:
                    dist[peer] = dist[node] + 1
                    queue.append(peer)
        return dist

    def _spanning_tree(self) -> set[tuple[int, int]]:
        """(dpid, port) ends of the links of a BFS tree rooted at the lowest
        dpid of each connected component. Deterministic: every app that uses
        it floods along the same tree."""
        tree: set[tuple[int, int]] = set()
        seen: set[int] = set()
        for root in sorted(self.adj):
            if root in seen:
                continue
            seen.add(root)
            queue = deque([root])
            while queue:
                node = queue.popleft()
                for port, (peer, peer_port) in sorted(self.adj[node].items()):
                    if peer in seen:
                        continue
                    seen.add(peer)
                    tree.add((node, port))
                    tree.add((peer, peer_port))
                    queue.append(peer)
        return tree


def ecmp_pick(choices: list[int], *keys: object) -> int:
    """Pick one of `choices` by a stable hash of `keys` (e.g. src and dst MAC),
    so one flow always takes the same path and different flows spread out.
    Python's hash() is salted per process, so this uses CRC32."""
    import zlib

    if not choices:
        raise ValueError("ecmp_pick: no choices")
    digest = zlib.crc32("|".join(str(k) for k in keys).encode())
    return choices[digest % len(choices)]
