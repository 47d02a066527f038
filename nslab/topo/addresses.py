"""Addresses, once the links have made every interface: the nodes' `ip`,
`interfaces:`, `gateway` and `dpid`, the links' per-endpoint addresses, then
automatic addresses for hosts without one and datapath ids for switches.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from nslab import kinds
from nslab.topo.context import NO_ADDRESS, BuildContext, Pending, first_iface, fix_hint, show
from nslab.topo.model import Interface, Node, Origin, Topology
from nslab.yamlsrc import LMap

IFACE_KEYS = {"ip", "mac"}
MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


def apply_addresses(ctx: BuildContext, topo: Topology) -> None:
    """Apply `ip`, `interfaces:`, labels and link ipv4 now that interfaces exist."""
    for node in topo.nodes.values():
        _interfaces(ctx, node)
        _node_ip(ctx, node)
        _gateway(ctx, node)
        _dpid_key(ctx, node)
    for pending in ctx.pending:
        _settle(ctx, topo, pending)


def auto_addresses(ctx: BuildContext, topo: Topology, subnet: ipaddress.IPv4Network) -> None:
    """The next free address of `subnet` for every linked host that has none."""
    pool = (ip for ip in subnet.hosts() if ip not in ctx.used_ips)
    for node in topo.nodes.values():
        kind = kinds.get(node.kind)
        if kind is None or kind.role != "host" or not node.interfaces:
            continue
        if node.name in ctx.no_address or node.ips:
            continue
        ip = next(pool, None)
        if ip is None:
            ctx.bad(
                ctx.origins.get("topology.subnet", node.origin),
                f"subnet {subnet} has no free address left for {node.name}",
                "use a larger `subnet` or give the host an explicit `ip`",
            )
            return
        node.interfaces[first_iface(node)].ips.append(
            ipaddress.IPv4Interface(f"{ip}/{subnet.prefixlen}")
        )


def auto_dpids(topo: Topology) -> None:
    """Datapath ids 1, 2, ... for OpenFlow switches without one (skipping used ids)."""
    used = {n.dpid for n in topo.nodes.values() if n.dpid is not None}
    nxt = 1
    for node in topo.nodes.values():
        kind = kinds.get(node.kind)
        if kind is None or not kind.openflow or node.dpid is not None:
            continue
        while nxt in used:
            nxt += 1
        node.dpid = nxt
        used.add(nxt)


# -- a node's own keys ----------------------------------------------------------


def _interfaces(ctx: BuildContext, node: Node) -> None:
    """`interfaces: {eth0: {ip: ..., mac: ...}}` and nslab.ip/mac.IFACE labels."""
    ifaces = node.config.pop("_nslab_interfaces", None)
    io = ctx.origins.get(f"node:{node.name}:interfaces", node.origin)
    label_ifaces = node.config.pop("_nslab_label_ifaces", {})
    if ifaces is not None and not isinstance(ifaces, dict):
        ctx.bad(
            io,
            f"interfaces must be a mapping, got {show(ifaces)}",
            "e.g. `interfaces: {eth0: {ip: 10.0.0.1/24}}`",
        )
        ifaces = None
    for iname, ispec in list((ifaces or {}).items()) + list(label_ifaces.items()):
        from_labels = iname in label_ifaces and ispec is label_ifaces[iname]
        ipath = f"{io.key}.{iname}"
        iorigin = (
            Origin(io.file, ifaces.line_of(iname), ipath)
            if isinstance(ifaces, LMap) and not from_labels
            else io
        )
        if ispec is None:
            ispec = {}
        if not isinstance(ispec, dict):
            ctx.bad(
                iorigin,
                f"interface settings must be a mapping, got {show(ispec)}",
                f"e.g. `{iname}: {{ip: 10.0.0.1/24}}`",
            )
            continue
        for key in ispec:
            if key not in IFACE_KEYS:
                ctx.bad(
                    Origin(io.file, _line(ispec, key, iorigin), f"{ipath}.{key}"),
                    f"unknown interface key '{key}'",
                    "interface keys: ip, mac",
                )
        if str(iname) not in node.interfaces:
            linked = ", ".join(node.interfaces) or "none"
            ctx.bad(
                iorigin,
                f"unknown interface '{iname}': no link uses {node.name}:{iname}",
                f"{fix_hint(iname, node.interfaces)}add a link with endpoint "
                f'"{node.name}:{iname}" or fix the name (linked interfaces: {linked})',
            )
            continue
        for key in ("ip", "mac"):
            if key in ispec:
                o = Origin(io.file, _line(ispec, key, iorigin), f"{ipath}.{key}")
                ctx.wait_for_link(node.name, str(iname), {key: ispec[key]}, o)


def _node_ip(ctx: BuildContext, node: Node) -> None:
    """A node-level `ip` goes on its first interface; `ip: none` keeps it bare."""
    ip = node.config.pop("_nslab_ip", None)
    if ip is None and f"node:{node.name}:ip" not in ctx.origins:
        return
    o = ctx.origins.get(f"node:{node.name}:ip", node.origin)
    if ip is None or (isinstance(ip, str) and ip.lower() == NO_ADDRESS) or ip == []:
        ctx.no_address.add(node.name)
    elif not node.interfaces:
        ctx.bad(
            o,
            f"{node.name} has an address but no link",
            f'add a link such as endpoints: ["{node.name}:eth0", "s1:eth1"]',
        )
    else:
        ctx.wait_for_link(node.name, first_iface(node), {"ip": ip}, o)


def _gateway(ctx: BuildContext, node: Node) -> None:
    gw = node.config.pop("_nslab_gateway", None)
    if gw is None:
        return
    try:
        node.gateway = ipaddress.IPv4Address(str(gw))
    except ValueError:
        ctx.bad(
            ctx.origins.get(f"node:{node.name}:gateway", node.origin),
            f"bad gateway '{gw}': not an IPv4 address",
            "write an address without prefix, e.g. 10.0.0.1",
        )


def _dpid_key(ctx: BuildContext, node: Node) -> None:
    dpid = node.config.pop("_nslab_dpid", None)
    if dpid is None:
        return
    node.dpid = _dpid(dpid)
    if node.dpid is None:
        ctx.bad(
            ctx.origins.get(f"node:{node.name}:dpid", node.origin),
            f"bad dpid {show(dpid)}",
            "write a number (1, 2, ...) or hex like 0x1a",
        )


# -- one interface's settings -------------------------------------------------------


def _settle(ctx: BuildContext, topo: Topology, p: Pending) -> None:
    node = topo.nodes.get(p.node)
    if node is None or p.iface not in node.interfaces:
        return  # reported elsewhere: unknown node or interface
    intf = node.interfaces[p.iface]
    if "ip" in p.settings:
        _settle_ip(ctx, node, intf, p.settings["ip"], p.origin)
    if "mac" in p.settings:
        _settle_mac(ctx, intf, p.settings["mac"], p.origin)


def _settle_ip(ctx: BuildContext, node: Node, intf: Interface, value: Any, o: Origin) -> None:
    if isinstance(value, str) and value.lower() == NO_ADDRESS:
        ctx.no_address.add(node.name)
        return
    values = value if isinstance(value, list) else [value]
    kind = kinds.get(node.kind)
    if kind is not None and kind.root_namespace and values:
        ctx.bad(
            o,
            f"{node.kind} ports carry no IP address",
            "put the address on a host (kind linux) instead",
        )
        return
    for v in values:
        try:
            addr = ipaddress.IPv4Interface(str(v))
        except ValueError:
            ctx.bad(
                o,
                f"bad CIDR {show(v)}",
                "write an IPv4 address with prefix length, e.g. 10.0.0.1/24",
            )
            continue
        if "/" not in str(v):
            ctx.bad(o, f"address '{v}' has no prefix length", f"write it as a CIDR, e.g. {v}/24")
            continue
        net = addr.network
        if net.prefixlen < 31 and addr.ip in (net.network_address, net.broadcast_address):
            ctx.bad(
                o,
                f"{addr} is the network or broadcast address of {net}",
                "pick a host address inside the network",
            )
            continue
        if addr not in intf.ips:
            intf.ips.append(addr)
            ctx.origins[f"ip:{addr.ip}:{node.name}:{intf.name}"] = o
        ctx.used_ips.add(addr.ip)


def _settle_mac(ctx: BuildContext, intf: Interface, mac: Any, o: Origin) -> None:
    if not isinstance(mac, str):
        ctx.bad(
            o,
            f"MAC {show(mac)} was read as a number (YAML 1.1 reads some xx:xx:.. as base 60)",
            'quote it: mac: "02:00:00:00:00:01"',
        )
    elif not MAC_RE.match(mac):
        ctx.bad(o, f"bad MAC '{mac}'", 'write six hex bytes, e.g. "02:00:00:00:00:01"')
    elif int(mac[:2], 16) & 1:
        ctx.bad(
            o,
            f"MAC '{mac}' is a multicast address (first byte odd)",
            'use a unicast, locally administered one such as "02:..."',
        )
    else:
        intf.mac = mac.lower()
        ctx.origins[f"mac:{intf.node}:{intf.name}"] = o


def _line(m: Any, key: Any, fallback: Origin) -> int | None:
    return m.line_of(key) if isinstance(m, LMap) else fallback.line


def _dpid(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().replace(":", "")
    try:
        return int(text, 16) if text.startswith("0x") or ":" in str(value) else int(text)
    except ValueError:
        return None
