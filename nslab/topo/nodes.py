"""The `topology.nodes` section: each node's kind and keys, layered from
`defaults`, `kinds.<kind>` and the node itself (containerlab's order).

nslab keys that need the links (ip, gateway, interfaces, dpid) are kept in
`node.config` as `_nslab_<key>` and read by addresses.py once links exist.
"""

from __future__ import annotations

from typing import Any

import yaml

from nslab import kinds
from nslab.topo.context import LABEL_PREFIX, NO_ADDRESS, BuildContext, fix_hint, keys, show
from nslab.topo.model import Node, Origin, Topology
from nslab.yamlsrc import LMap, plain

DEFAULT_KIND = "linux"
# Every nslab node key of any kind, to tell "not for this kind" from "unknown".
NSLAB_NODE_KEYS = {"ip", "gateway", "interfaces", "dpid"}


def read_nodes(ctx: BuildContext, tp: LMap, topo: Topology, topology_line: int | None) -> None:
    """Every node of `topology.nodes`, with `defaults` and `kinds` layered under it."""
    nodes = tp.get("nodes")
    if not nodes:
        ctx.bad(
            ctx.origin(tp, "nodes", "topology.nodes")
            if "nodes" in tp
            else Origin(ctx.file, topology_line, "topology.nodes"),
            "missing or empty `nodes`" if "nodes" in tp else "missing `nodes`",
            "list the nodes under `topology: nodes:`, e.g. `h1: {kind: linux}`",
        )
        return
    if ctx.mapping(nodes, ctx.origin(tp, "nodes", "topology.nodes"), "topology.nodes") is None:
        return
    defaults = (
        ctx.mapping(
            tp.get("defaults"),
            ctx.origin(tp, "defaults", "topology.defaults"),
            "topology.defaults",
        )
        or LMap()
    )
    kind_defaults = (
        ctx.mapping(tp.get("kinds"), ctx.origin(tp, "kinds", "topology.kinds"), "topology.kinds")
        or LMap()
    )
    for kname, kval in list(kind_defaults.items()):
        ctx.mapping(
            kval,
            ctx.origin(kind_defaults, kname, f"topology.kinds.{kname}"),
            f"topology.kinds.{kname}",
        )
    for name, spec in nodes.items():
        path = f"topology.nodes.{name}"
        o = ctx.origin(nodes, name, path)
        if spec is not None and not isinstance(spec, dict):
            ctx.bad(o, f"node must be a mapping, got {show(spec)}", "e.g. `h1: {kind: linux}`")
            spec = LMap()
        spec = spec if spec is not None else LMap()
        node = _node(ctx, str(name), spec, defaults, kind_defaults, path, o)
        topo.nodes[node.name] = node


def _node(
    ctx: BuildContext,
    name: str,
    spec: LMap,
    defaults: LMap,
    kind_defaults: LMap,
    path: str,
    o: Origin,
) -> Node:
    kind_name = spec.get("kind", defaults.get("kind", DEFAULT_KIND))
    kind_origin = (
        ctx.origin(spec, "kind", f"{path}.kind")
        if "kind" in spec
        else ctx.origin(defaults, "kind", "topology.defaults.kind")
        if "kind" in defaults
        else o
    )
    ctx.origins[f"node:{name}:kind"] = kind_origin
    kind_name = str(kind_name)
    layer_kind = kind_defaults.get(kind_name)
    layers = [
        (defaults, "topology.defaults", True),
        (
            layer_kind if isinstance(layer_kind, dict) else LMap(),
            f"topology.kinds.{kind_name}",
            False,
        ),
        (spec, path, False),
    ]
    node = Node(name=name, kind=kind_name, origin=o)
    _apply(ctx, node, _layered(ctx, name, kind_name, layers))
    _labels(ctx, node)
    return node


def _layered(
    ctx: BuildContext, name: str, kind_name: str, layers: list[tuple[LMap, str, bool]]
) -> dict[str, Any]:
    """The node's keys, later layers winning (env and labels merge across layers);
    a problem for each key its kind does not take."""
    kind = kinds.get(kind_name)
    values: dict[str, Any] = {}
    for layer, lpath, is_default in layers:
        for key, value in layer.items():
            key = str(key)
            ko = ctx.origin(layer, key, f"{lpath}.{key}")
            if key == "kind":
                continue
            if key in NSLAB_NODE_KEYS:
                if kind is not None and key not in kind.allowed_keys:
                    if is_default:  # defaults apply to every kind: skip what does not fit
                        continue
                    ctx.bad(
                        ko,
                        f"'{key}' does not apply to kind {kind_name}",
                        f"{kind_name} takes: {keys(kind.allowed_keys)}",
                    )
                    continue
            elif kind is not None and key in kind.allowed_keys:
                pass  # a kind's own key: kept in node.config for its module
            elif key not in kinds.CONTAINERLAB_NODE_KEYS:
                if is_default and any(key in k.allowed_keys for k in kinds.all_kinds().values()):
                    continue  # another kind's key in `defaults`: not for this node
                allowed = set(kinds.CONTAINERLAB_NODE_KEYS) | (
                    set(kind.allowed_keys) if kind else NSLAB_NODE_KEYS
                )
                ctx.bad(
                    ko,
                    f"unknown node key '{key}'",
                    f"{fix_hint(key, allowed)}nslab keys for {kind_name}: "
                    f"{keys(kind.allowed_keys) if kind else keys(NSLAB_NODE_KEYS)}; "
                    "containerlab's node keys are accepted too",
                )
                continue
            if (
                key in ("env", "labels")
                and isinstance(value, dict)
                and isinstance(values.get(key), dict)
            ):
                value = {**values[key], **value}  # containerlab merges maps across levels
            values[key] = value
            ctx.origins[f"node:{name}:{key}"] = ko
    return values


def _apply(ctx: BuildContext, node: Node, values: dict[str, Any]) -> None:
    """Set the node's fields from its keys; the rest goes to node.config."""
    for key, value in values.items():
        ko = ctx.origins[f"node:{node.name}:{key}"]
        if key == "image":
            if isinstance(value, str):
                node.image = value
            else:
                ctx.bad(
                    ko,
                    f"image must be a string, got {show(value)}",
                    "e.g. `image: nslab/host:latest`",
                )
        elif key == "exec":
            if isinstance(value, str):
                value = [value]
            if isinstance(value, list) and all(isinstance(c, str) for c in value):
                node.exec = list(value)
            else:
                ctx.bad(ko, "exec must be a list of command strings", 'e.g. `exec: ["ip link"]`')
        elif key in ("env", "labels"):
            if isinstance(value, dict):
                setattr(node, key, {str(k): _scalar_str(v) for k, v in value.items()})
            else:
                ctx.bad(
                    ko,
                    f"{key} must be a mapping, got {show(value)}",
                    f"write `{key}: {{NAME: value}}`",
                )
        elif key in NSLAB_NODE_KEYS:
            node.config[f"_nslab_{key}"] = value  # interpreted once links are known
        else:
            node.config[key] = plain(value)


def _labels(ctx: BuildContext, node: Node) -> None:
    """Move nslab.* labels (written by `nslab export`) into the nslab keys."""
    lo = ctx.origins.get(f"node:{node.name}:labels", node.origin)
    kind = kinds.get(node.kind)
    for label in [k for k in node.labels if k.startswith(LABEL_PREFIX)]:
        value = node.labels.pop(label)
        rest = label[len(LABEL_PREFIX) :]
        key, _, iface = rest.partition(".")
        if key == "dpid" and not iface:
            node.config.setdefault("_nslab_dpid", value)
        elif key == "gateway" and not iface:
            node.config.setdefault("_nslab_gateway", value)
        elif key in ("ip", "mac"):
            ifaces = node.config.setdefault("_nslab_label_ifaces", {})
            if key == "ip":
                value = NO_ADDRESS if value == NO_ADDRESS else [v for v in value.split(",") if v]
            if iface:
                ifaces.setdefault(iface, {})[key] = value
            elif key == "ip":
                node.config.setdefault("_nslab_ip", value)
            else:
                ctx.bad(lo, f"label '{label}' needs an interface", "write nslab.mac.eth0")
        elif key in ("controller", "controller-port", "controller-fabric"):
            pass  # read from topology.kinds.ovs-bridge by _controller_from_labels
        elif kind is not None and rest in kind.allowed_keys:
            try:  # a kind's own key, exported as YAML text
                node.config.setdefault(rest, yaml.safe_load(value))
            except yaml.YAMLError:
                ctx.bad(lo, f"label '{label}' is not YAML", "re-export the topology")
        else:
            ctx.bad(
                lo,
                f"unknown nslab label '{label}'",
                "nslab labels are nslab.ip[.IFACE], nslab.mac.IFACE, nslab.gateway, nslab.dpid",
            )
        ctx.origins.setdefault(f"node:{node.name}:label:{rest}", lo)


def _scalar_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
