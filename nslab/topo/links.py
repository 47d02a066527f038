"""The `topology.links` section: endpoints, per-link shaping and per-endpoint
addresses (containerlab's `ipv4: [a, b]` and extended endpoint objects).

Each endpoint gets an Interface on its node; addresses wait in the context
until addresses.py applies them.
"""

from __future__ import annotations

from typing import Any

from nslab.topo.context import BuildContext, show
from nslab.topo.model import Endpoint, Interface, Link, LinkParams, Origin, Topology
from nslab.yamlsrc import LMap, plain

LINK_PARAM_KEYS = ("bw", "delay", "jitter", "loss", "max_queue")
LINK_KEYS = {"endpoints", "type", "mtu", "ipv4", "ipv6", "vars", "labels", *LINK_PARAM_KEYS}


def read_links(ctx: BuildContext, tp: LMap, topo: Topology) -> None:
    """Every link of `topology.links`; makes the interfaces of its endpoints."""
    links = tp.get("links")
    if links is None:
        return  # a lab of unconnected nodes is odd but legal
    lo = ctx.origin(tp, "links", "topology.links")
    if not isinstance(links, list):
        ctx.bad(
            lo,
            f"links must be a list, got {show(links)}",
            'write `- endpoints: ["h1:eth0", "s1:eth1"]` items',
        )
        return
    for i, spec in enumerate(links):
        path = f"topology.links[{i}]"
        o = ctx.origin(links, i, path)
        if not isinstance(spec, dict):
            ctx.bad(
                o,
                f"a link must be a mapping, got {show(spec)}",
                'write `- endpoints: ["h1:eth0", "s1:eth1"]`',
            )
            continue
        link = _link(ctx, spec, path, o, topo)
        if link is not None:
            topo.links.append(link)


def _link(ctx: BuildContext, spec: LMap, path: str, o: Origin, topo: Topology) -> Link | None:
    ctx.unknown_keys(
        spec,
        LINK_KEYS,
        path,
        "link key",
        "link keys: endpoints, "
        + ", ".join(LINK_PARAM_KEYS)
        + " (or the same under `vars:`), mtu, ipv4",
    )
    ltype = spec.get("type", "veth")
    if ltype != "veth":
        ctx.bad(
            ctx.origin(spec, "type", f"{path}.type"),
            f"link type '{ltype}' is not supported",
            "nslab builds veth links only: drop `type` or use `type: veth`",
        )
        return None
    eps = spec.get("endpoints")
    eo = ctx.origin(spec, "endpoints", f"{path}.endpoints") if "endpoints" in spec else o
    if not isinstance(eps, list) or len(eps) != 2:
        ctx.bad(
            eo,
            f"a link needs exactly two endpoints, got {show(eps)}",
            'write `endpoints: ["h1:eth0", "s1:eth1"]`',
        )
        return None
    ends: list[Endpoint] = []
    extra: list[dict[str, Any]] = []
    for j, ep in enumerate(eps):
        epath = f"{path}.endpoints[{j}]"
        eop = ctx.origin(eps, j, epath)
        parsed = _endpoint(ctx, ep, eop, epath)
        if parsed is None:
            return None
        ends.append(parsed[0])
        extra.append(parsed[1])
    link = Link(ends[0], ends[1], _params(ctx, spec, path), origin=o)
    for j, end in enumerate(ends):
        ctx.origins[f"{path}.endpoints[{j}]"] = ctx.origin(eps, j, f"{path}.endpoints[{j}]")
        _attach(end, topo, ctx.origins[f"{path}.endpoints[{j}]"])
    _endpoint_addresses(ctx, spec, path, ends, extra)
    for key in ("mtu", "ipv6", "labels"):
        if key in spec:
            link.config[key] = plain(spec[key])
            ctx.origins[f"{path}.{key}"] = ctx.origin(spec, key, f"{path}.{key}")
    return link


def _endpoint_addresses(
    ctx: BuildContext, spec: LMap, path: str, ends: list[Endpoint], extra: list[dict[str, Any]]
) -> None:
    """containerlab's per-endpoint addresses, `ipv4: [a, b]` or extended endpoint
    objects: applied once every link has made its interfaces."""
    v4 = spec.get("ipv4")
    if v4 is not None:
        vo = ctx.origin(spec, "ipv4", f"{path}.ipv4")
        if not isinstance(v4, list) or len(v4) > 2:
            ctx.bad(
                vo,
                "ipv4 must be a list of up to two CIDRs (one per endpoint)",
                'e.g. `ipv4: ["10.0.0.1/24", "10.0.0.2/24"]`',
            )
        else:
            for j, addr in enumerate(v4):
                if addr:
                    extra[j].setdefault("ipv4", addr)
                    extra[j]["_origin"] = ctx.origin(v4, j, f"{path}.ipv4[{j}]")
    for j, end in enumerate(ends):
        e = extra[j]
        eorigin = e.get("_origin", ctx.origins[f"{path}.endpoints[{j}]"])
        settings: dict[str, Any] = {}
        if "ipv4" in e:
            settings["ip"] = e["ipv4"]
        if "mac" in e:
            settings["mac"] = e["mac"]
        if settings:
            ctx.wait_for_link(end.node, end.iface, settings, eorigin)


def _endpoint(
    ctx: BuildContext, ep: Any, o: Origin, path: str
) -> tuple[Endpoint, dict[str, Any]] | None:
    if isinstance(ep, dict):  # containerlab's extended form
        node, iface = ep.get("node"), ep.get("interface")
        if not isinstance(node, str) or not isinstance(iface, str) or not node or not iface:
            ctx.bad(
                o,
                "an endpoint object needs `node` and `interface`",
                "e.g. `{node: h1, interface: eth0}`",
            )
            return None
        for key in ep:
            if key not in ("node", "interface", "mac", "ipv4", "ipv6", "vars"):
                ctx.bad(
                    ctx.origin(ep, key, f"{path}.{key}"),
                    f"unknown endpoint key '{key}'",
                    "endpoint keys: node, interface, mac, ipv4",
                )
        extra = {k: ep[k] for k in ("mac", "ipv4") if k in ep}
        return Endpoint(node, iface), extra
    if not isinstance(ep, str) or ep.count(":") != 1 or ep.startswith(":") or ep.endswith(":"):
        ctx.bad(o, f"malformed endpoint {show(ep)}", 'write it as "node:interface", e.g. "h1:eth0"')
        return None
    node, iface = ep.split(":")
    return Endpoint(node, iface), {}


def _attach(end: Endpoint, topo: Topology, o: Origin) -> None:
    node = topo.nodes.get(end.node)
    if node is None or end.iface in node.interfaces:
        return  # reported by validate: unknown node / interface used twice
    node.interfaces[end.iface] = Interface(name=end.iface, node=end.node, origin=o)


def _params(ctx: BuildContext, spec: LMap, path: str) -> LinkParams:
    params = LinkParams()
    vars_ = spec.get("vars")
    if vars_ is not None and not isinstance(vars_, dict):
        ctx.bad(
            ctx.origin(spec, "vars", f"{path}.vars"),
            "vars must be a mapping",
            "e.g. `vars: {bw: 100}`",
        )
        vars_ = None
    for key in LINK_PARAM_KEYS:
        sources = []
        if key in spec:
            sources.append((spec[key], ctx.origin(spec, key, f"{path}.{key}")))
        if vars_ and key in vars_:
            sources.append((vars_[key], ctx.origin(vars_, key, f"{path}.vars.{key}")))
        if not sources:
            continue
        value, ko = sources[0]
        if len(sources) == 2 and sources[1][0] != value:
            ctx.bad(
                sources[1][1],
                f"{key} is set twice with different values ({value!r}, {sources[1][0]!r})",
                f"keep `{key}` in one place",
            )
        ctx.origins[f"{path}.{key}"] = ko
        parsed = _param(ctx, key, value, ko)
        if parsed is not None:
            setattr(params, key, parsed)
    return params


def _param(ctx: BuildContext, key: str, value: Any, o: Origin) -> Any:
    if value is None:
        return None
    if key in ("bw", "loss"):
        if isinstance(value, str):  # YAML 1.1 reads 1e3 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            unit = "Mbit/s" if key == "bw" else "percent"
            ctx.bad(
                o,
                f"{key} must be a number ({unit}), got {show(value)}",
                f"write e.g. `{key}: {100 if key == 'bw' else 0.5}`",
            )
            return None
        return float(value)
    if key == "max_queue":
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.bad(
                o,
                f"max_queue must be a whole number of packets, got {show(value)}",
                "write e.g. `max_queue: 1000`",
            )
            return None
        return value
    # delay / jitter: tc time strings, range-checked in validate
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        ctx.bad(
            o,
            f"{key} must be a time like 5ms, got {show(value)}",
            "write e.g. `5ms` or `100us`",
        )
        return None
    return str(value)
