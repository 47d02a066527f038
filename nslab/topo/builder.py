"""Turn parsed YAML (containerlab layout + nslab keys) into a `Topology`.

The flow, one module per section of the file:

    build()                  the top-level keys, `topology.subnet` and `.controller` (here)
      nodes.read_nodes()     `topology.nodes`, layered over `defaults` and `kinds`
      links.read_links()     `topology.links`: endpoints, shaping, endpoint addresses
      addresses.*            addresses and datapath ids, once every interface exists

Problems are collected (nslab.problems), never raised one by one, so the user
sees them all. Checks that need the whole model (clashes, name lengths, link
parameter ranges) live in nslab.topo.validate and also run on topologies
built in Python.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from nslab.problems import Problems
from nslab.topo.addresses import apply_addresses, auto_addresses, auto_dpids
from nslab.topo.context import LABEL_PREFIX, BuildContext, Built, keys, show
from nslab.topo.links import read_links
from nslab.topo.model import FABRIC_VIEWS, Controller, Origin, Topology
from nslab.topo.nodes import read_nodes
from nslab.yamlsrc import LMap, duplicate_problems

DEFAULT_SUBNET = ipaddress.IPv4Network("10.0.0.0/8")
TOP_KEYS = {"name", "prefix", "mgmt", "topology", "settings", "debug"}
TOPOLOGY_KEYS = {"nodes", "links", "defaults", "kinds", "groups", "controller", "subnet"}


def build(
    raw: Any, file: str, lab_name: str | None = None, default_name: str = "lab"
) -> tuple[Built, Problems]:
    """Build a Topology from parsed YAML. Returns it with the problems found so far."""
    ctx = BuildContext(file)
    if not isinstance(raw, LMap):
        ctx.bad(
            Origin(file, 1, ""),
            f"the file must be a YAML mapping, got {show(raw)}",
            "start with `name: mylab` and `topology: {nodes: ..., links: ...}`",
        )
        return Built(Topology(name=lab_name or default_name, source=file)), ctx.problems
    for problem in duplicate_problems(raw, file):
        ctx.problems.append(problem)
    ctx.unknown_keys(
        raw,
        TOP_KEYS,
        "",
        "top-level key",
        "top-level keys are: name, topology "
        "(nslab keys such as controller and subnet go under `topology:`)",
    )
    topo = Topology(name=lab_name or _lab_name(ctx, raw, default_name), source=file)
    tp = _topology_section(ctx, raw)
    if tp is not None:
        subnet = _subnet(ctx, tp)
        topo.controller = _controller(ctx, tp) or _controller_from_labels(ctx, tp)
        read_nodes(ctx, tp, topo, raw.line_of("topology"))
        read_links(ctx, tp, topo)
        apply_addresses(ctx, topo)
        auto_addresses(ctx, topo, subnet)
        auto_dpids(topo)
    return Built(topo, ctx.origins), ctx.problems


def _lab_name(ctx: BuildContext, raw: LMap, default_name: str) -> str:
    name = raw.get("name")
    if name is None:
        return default_name
    if not isinstance(name, str):
        ctx.bad(
            ctx.origin(raw, "name", "name"),
            f"lab name must be a string, got {show(name)}",
            "e.g. `name: dc`",
        )
        return default_name
    ctx.origins["name"] = ctx.origin(raw, "name", "name")
    return name


def _topology_section(ctx: BuildContext, raw: LMap) -> LMap | None:
    """The `topology:` mapping, or None (with a problem) when there is none."""
    if "topology" not in raw:
        ctx.bad(
            Origin(ctx.file, raw.line, "topology"),
            "missing `topology` section",
            "add `topology:` with `nodes:` and `links:` under it",
        )
        return None
    tp = ctx.mapping(raw["topology"], ctx.origin(raw, "topology", "topology"), "topology")
    if tp is None:
        if raw["topology"] is None:
            ctx.bad(
                ctx.origin(raw, "topology", "topology"),
                "`topology` is empty",
                "add `nodes:` and `links:` under it",
            )
        return None
    ctx.unknown_keys(
        tp, TOPOLOGY_KEYS, "topology", "key", "keys under topology: " + keys(TOPOLOGY_KEYS)
    )
    return tp


def _subnet(ctx: BuildContext, tp: LMap) -> ipaddress.IPv4Network:
    if "subnet" not in tp:
        return DEFAULT_SUBNET
    o = ctx.origin(tp, "subnet", "topology.subnet")
    try:
        return ipaddress.IPv4Network(str(tp["subnet"]), strict=True)
    except ValueError as exc:
        ctx.bad(o, f"bad subnet '{tp['subnet']}': {exc}", "write a network like 10.0.0.0/8")
        return DEFAULT_SUBNET


def _controller(ctx: BuildContext, tp: LMap) -> Controller | None:
    if "controller" not in tp or tp["controller"] is None:
        return None
    value = tp["controller"]
    o = ctx.origin(tp, "controller", "topology.controller")
    if isinstance(value, str):
        return Controller(app=value, origin=o)
    if not isinstance(value, dict):
        ctx.bad(
            o,
            f"controller must be an app name or a mapping, got {show(value)}",
            "write `controller: fabric_router` or `controller: {app: fabric_router, port: 6653}`",
        )
        return None
    for key in value:
        if key not in ("app", "port", "fabric"):
            ctx.bad(
                ctx.origin(value, key, f"topology.controller.{key}"),
                f"unknown key '{key}'",
                "controller takes `app`, `port` and `fabric`",
            )
    app = value.get("app")
    if not isinstance(app, str) or not app:
        ctx.bad(
            o,
            "controller needs `app`",
            "e.g. `app: fabric_router` (a file in controller/) or a path",
        )
        return None
    port = value.get("port")
    if port is not None and (
        not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535
    ):
        ctx.bad(
            ctx.origin(value, "port", "topology.controller.port"),
            f"controller port must be 1-65535, got {show(port)}",
            "leave it out to let nslab pick a free port",
        )
        port = None
    fabric = value.get("fabric", "full")
    if fabric not in FABRIC_VIEWS:
        ctx.bad(
            ctx.origin(value, "fabric", "topology.controller.fabric"),
            f"controller fabric must be {' or '.join(FABRIC_VIEWS)}, got {show(fabric)}",
            "`switches-only` hides hosts (MACs, attachment ports) from the controller's "
            "fabric.json; leave it out for the full view",
        )
        fabric = "full"
    return Controller(app=app, port=port, fabric=fabric, origin=o)


def _controller_from_labels(ctx: BuildContext, tp: LMap) -> Controller | None:
    """`nslab export` writes the controller as labels of kinds.ovs-bridge (the
    containerlab schema has no place for it at the top)."""
    kd = tp.get("kinds")
    ovs = kd.get("ovs-bridge") if isinstance(kd, dict) else None
    labels = ovs.get("labels") if isinstance(ovs, dict) else None
    if not isinstance(labels, dict) or f"{LABEL_PREFIX}controller" not in labels:
        return None
    o = ctx.origin(labels, f"{LABEL_PREFIX}controller", "topology.kinds.ovs-bridge.labels")
    port = labels.get(f"{LABEL_PREFIX}controller-port")
    try:
        port = int(port) if port is not None else None
    except ValueError:
        ctx.bad(o, f"bad controller port label {port!r}", "write a number 1-65535")
        port = None
    fabric = str(labels.get(f"{LABEL_PREFIX}controller-fabric", "full"))
    if fabric not in FABRIC_VIEWS:
        ctx.bad(o, f"bad controller fabric label {fabric!r}", " or ".join(FABRIC_VIEWS))
        fabric = "full"
    return Controller(
        app=str(labels[f"{LABEL_PREFIX}controller"]), port=port, fabric=fabric, origin=o
    )
