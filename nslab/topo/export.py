"""Write a Topology as a containerlab file that containerlab's schema accepts.

Where containerlab has no words for an nslab setting, it goes where the
schema allows free values, and `nslab.topo.load` reads it back:

- link shaping (bw, delay, jitter, loss, max_queue) -> link `vars`
- an interface's single address -> the link's `ipv4` list (containerlab's own key);
  several addresses -> node label `nslab.ip.<iface>: "a/24,b/24"`
- MAC -> node label `nslab.mac.<iface>`; gateway -> `nslab.gateway`; dpid -> `nslab.dpid`
- a host that must stay without address -> `nslab.ip: none`
- kind-specific nslab keys -> `nslab.<key>` labels (YAML text)
- the controller -> labels of `topology.kinds.ovs-bridge`:
  `nslab.controller`, `nslab.controller-port`, `nslab.controller-fabric`
"""

from __future__ import annotations

from typing import Any

import yaml

from nslab import kinds
from nslab.topo.context import LABEL_PREFIX, NO_ADDRESS
from nslab.topo.model import Link, Node, Topology
from nslab.yamlsrc import plain


def to_containerlab(topo: Topology) -> dict[str, Any]:
    """The containerlab document (plain dicts and lists) for `topo`."""
    nodes: dict[str, Any] = {}
    single_ip: dict[tuple[str, str], str] = {}
    for node in topo.nodes.values():
        nodes[node.name] = _node(node, single_ip)
    doc_topology: dict[str, Any] = {}
    if topo.controller is not None:
        labels: dict[str, Any] = {f"{LABEL_PREFIX}controller": topo.controller.app}
        if topo.controller.port is not None:
            labels[f"{LABEL_PREFIX}controller-port"] = topo.controller.port
        if topo.controller.fabric != "full":
            labels[f"{LABEL_PREFIX}controller-fabric"] = topo.controller.fabric
        doc_topology["kinds"] = {"ovs-bridge": {"labels": labels}}
    doc_topology["nodes"] = nodes
    links = [_link(link, single_ip) for link in topo.links]
    if links:  # the schema wants at least one item when `links` is present
        doc_topology["links"] = links
    return {"name": topo.name, "topology": doc_topology}


def _node(node: Node, single_ip: dict[tuple[str, str], str]) -> dict[str, Any]:
    kind = kinds.get(node.kind)
    out: dict[str, Any] = {"kind": node.kind}
    if node.image:
        out["image"] = node.image
    if node.exec:
        out["exec"] = list(node.exec)
    if node.env:
        out["env"] = dict(node.env)
    labels: dict[str, Any] = dict(node.labels)
    if kind is not None and kind.role == "host" and node.interfaces and not node.ips:
        labels[f"{LABEL_PREFIX}ip"] = NO_ADDRESS  # keep it unaddressed on reload
    for intf in node.interfaces.values():
        if len(intf.ips) == 1:
            single_ip[(node.name, intf.name)] = str(intf.ips[0])
        elif intf.ips:
            labels[f"{LABEL_PREFIX}ip.{intf.name}"] = ",".join(str(ip) for ip in intf.ips)
        if intf.mac:
            labels[f"{LABEL_PREFIX}mac.{intf.name}"] = intf.mac
    if node.gateway is not None:
        labels[f"{LABEL_PREFIX}gateway"] = str(node.gateway)
    if node.dpid is not None:
        labels[f"{LABEL_PREFIX}dpid"] = node.dpid
    config = {}
    for key, value in node.config.items():
        if key in kinds.CONTAINERLAB_NODE_KEYS:
            config[key] = value
        else:  # a kind's own key: the schema has no place, labels carry it as YAML text
            labels[f"{LABEL_PREFIX}{key}"] = yaml.safe_dump(value, default_flow_style=True).strip()
    if labels:
        out["labels"] = labels
    out.update(config)
    return out


def _link(link: Link, single_ip: dict[tuple[str, str], str]) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoints": [str(link.a), str(link.b)]}
    ips = [single_ip.get((e.node, e.iface), "") for e in link.endpoints]
    if any(ips):
        out["ipv4"] = ips if ips[1] else ips[:1]
    params = {k: _number(v) for k, v in link.params.as_dict().items()}
    if params:
        out["vars"] = params
    for key, value in link.config.items():
        out[key] = value
    return out


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


class _Dumper(yaml.SafeDumper):
    pass


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(x, (dict, list)) for x in data)  # endpoints on one line
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_containerlab(topo: Topology, header: str = "") -> str:
    """containerlab YAML text for `topo`, with an optional leading comment."""
    text = yaml.dump(
        plain(to_containerlab(topo)),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        width=100,
    )
    if header:
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text
    return text
