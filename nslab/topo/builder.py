"""Turn parsed YAML (containerlab layout + nslab keys) into a `Topology`.

Problems are collected, never raised one by one, so the user sees them all.
Checks that need the whole model (clashes, name lengths, link parameter
ranges) live in nslab.topo.validate and also run on topologies built in Python.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from nslab import kinds
from nslab.topo.model import (
    FABRIC_VIEWS,
    Controller,
    Endpoint,
    Interface,
    Link,
    LinkParams,
    Node,
    Origin,
    Topology,
)
from nslab.topo.yamlsrc import LList, LMap, duplicates, plain

DEFAULT_SUBNET = ipaddress.IPv4Network("10.0.0.0/8")
DEFAULT_KIND = "linux"
TOP_KEYS = {"name", "prefix", "mgmt", "topology", "settings", "debug"}
TOPOLOGY_KEYS = {"nodes", "links", "defaults", "kinds", "groups", "controller", "subnet"}
LINK_PARAM_KEYS = ("bw", "delay", "jitter", "loss", "max_queue")
LINK_KEYS = {"endpoints", "type", "mtu", "ipv4", "ipv6", "vars", "labels", *LINK_PARAM_KEYS}
# Every nslab node key of any kind, to tell "not for this kind" from "unknown".
NSLAB_NODE_KEYS = {"ip", "gateway", "interfaces", "dpid"}
IFACE_KEYS = {"ip", "mac"}
# Labels that carry nslab settings in exported containerlab files (see export.py).
LABEL_PREFIX = "nslab."
MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
NO_ADDRESS = "none"  # `ip: none`: a host that must stay without an address


def fix_hint(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f"did you mean '{close[0]}'? " if close else ""


class Problems:
    """Collects 'file:line: key: what is wrong — how to fix' messages."""

    def __init__(self) -> None:
        self._found: list[tuple[int, str]] = []

    def add(self, origin: Origin, what: str, fix: str = "") -> None:
        msg = f"{origin}: {what}"
        if fix:
            msg += f" — {fix}"
        self.add_raw(msg, origin.line)

    def add_raw(self, msg: str, line: int | None = None) -> None:
        """A message that already names its file, line and key."""
        if all(msg != m for _, m in self._found):
            self._found.append((line or 0, msg))

    @property
    def items(self) -> list[str]:
        """The messages in file order (line by line)."""
        return [m for _, m in sorted(self._found, key=lambda x: x[0])]

    def __bool__(self) -> bool:
        return bool(self._found)


@dataclass
class Built:
    """A topology plus where each of its values was written."""

    topo: Topology
    origins: dict[str, Origin] = field(default_factory=dict)

    def at(self, key: str, fallback: Origin) -> Origin:
        return self.origins.get(key, fallback)


class _Builder:
    def __init__(self, raw: Any, file: str, lab_name: str | None, default_name: str):
        self.raw = raw
        self.file = file
        self.lab_name = lab_name
        self.default_name = default_name
        self.problems = Problems()
        self.origins: dict[str, Origin] = {}
        self.used_ips: set[ipaddress.IPv4Address] = set()
        self.no_address: set[str] = set()
        # interface settings (ip, mac) wait here until every link has made its interfaces
        self.pending: list[tuple[str, str, dict[str, Any], Origin]] = []

    # -- helpers -----------------------------------------------------------
    def origin(self, container: Any, key: Any, path: str) -> Origin:
        line = None
        if isinstance(container, LMap):
            line = container.line_of(key)
        elif isinstance(container, LList) and isinstance(key, int):
            line = container.line_of(key)
        return Origin(self.file, line, path)

    def bad(self, origin: Origin, what: str, fix: str = "") -> None:
        self.problems.add(origin, what, fix)

    def mapping(self, value: Any, origin: Origin, what: str) -> LMap | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            self.bad(
                origin, f"{what} must be a mapping, got {_show(value)}", "write `key: value` lines"
            )
            return None
        return value

    # -- top level ----------------------------------------------------------
    def build(self) -> Built:
        raw = self.raw
        root_origin = Origin(self.file, 1, "")
        if not isinstance(raw, LMap):
            self.bad(
                root_origin,
                f"the file must be a YAML mapping, got {_show(raw)}",
                "start with `name: mylab` and `topology: {nodes: ..., links: ...}`",
            )
            return Built(Topology(name=self.lab_name or self.default_name, source=self.file))
        for path, line, first in duplicates(raw):
            leaf = path.rsplit(".", 1)[-1]
            self.bad(
                Origin(self.file, line, path),
                f"duplicate key '{leaf}' (first at line {first}); YAML keeps only the last one",
                "give every node/key a unique name, or merge the two",
            )
        for key in raw:
            if key not in TOP_KEYS:
                self.bad(
                    self.origin(raw, key, str(key)),
                    f"unknown top-level key '{key}'",
                    f"{fix_hint(key, TOP_KEYS)}top-level keys are: name, topology "
                    "(nslab keys such as controller and subnet go under `topology:`)",
                )
        topo = Topology(name=self._lab_name(raw), source=self.file)
        built = Built(topo, self.origins)
        if "topology" not in raw:
            self.bad(
                Origin(self.file, raw.line, "topology"),
                "missing `topology` section",
                "add `topology:` with `nodes:` and `links:` under it",
            )
            return built
        tp = self.mapping(raw["topology"], self.origin(raw, "topology", "topology"), "topology")
        if tp is None:
            if raw["topology"] is None:
                self.bad(
                    self.origin(raw, "topology", "topology"),
                    "`topology` is empty",
                    "add `nodes:` and `links:` under it",
                )
            return built
        for key in tp:
            if key not in TOPOLOGY_KEYS:
                self.bad(
                    self.origin(tp, key, f"topology.{key}"),
                    f"unknown key '{key}'",
                    f"{fix_hint(key, TOPOLOGY_KEYS)}keys under topology: "
                    + ", ".join(sorted(TOPOLOGY_KEYS)),
                )
        subnet = self._subnet(tp)
        topo.controller = self._controller(tp) or self._controller_from_labels(tp)
        self._nodes(tp, topo)
        self._links(tp, topo)
        self._apply_addresses(topo)
        self._auto_addresses(topo, subnet)
        self._auto_dpids(topo)
        return built

    def _lab_name(self, raw: LMap) -> str:
        if self.lab_name:
            return self.lab_name
        name = raw.get("name")
        if name is None:
            return self.default_name
        if not isinstance(name, str):
            self.bad(
                self.origin(raw, "name", "name"),
                f"lab name must be a string, got {_show(name)}",
                "e.g. `name: dc`",
            )
            return self.default_name
        self.origins["name"] = self.origin(raw, "name", "name")
        return name

    def _subnet(self, tp: LMap) -> ipaddress.IPv4Network:
        if "subnet" not in tp:
            return DEFAULT_SUBNET
        o = self.origin(tp, "subnet", "topology.subnet")
        try:
            return ipaddress.IPv4Network(str(tp["subnet"]), strict=True)
        except ValueError as exc:
            self.bad(o, f"bad subnet '{tp['subnet']}': {exc}", "write a network like 10.0.0.0/8")
            return DEFAULT_SUBNET

    def _controller(self, tp: LMap) -> Controller | None:
        if "controller" not in tp or tp["controller"] is None:
            return None
        value = tp["controller"]
        o = self.origin(tp, "controller", "topology.controller")
        if isinstance(value, str):
            return Controller(app=value, origin=o)
        if not isinstance(value, dict):
            self.bad(
                o,
                f"controller must be an app name or a mapping, got {_show(value)}",
                "write `controller: fabric_router` or `controller: {app: fabric_router, port: 6653}`",
            )
            return None
        for key in value:
            if key not in ("app", "port", "fabric"):
                self.bad(
                    self.origin(value, key, f"topology.controller.{key}"),
                    f"unknown key '{key}'",
                    "controller takes `app`, `port` and `fabric`",
                )
        app = value.get("app")
        if not isinstance(app, str) or not app:
            self.bad(
                o,
                "controller needs `app`",
                "e.g. `app: fabric_router` (a file in controller/) or a path",
            )
            return None
        port = value.get("port")
        if port is not None and (
            not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535
        ):
            self.bad(
                self.origin(value, "port", "topology.controller.port"),
                f"controller port must be 1-65535, got {_show(port)}",
                "leave it out to let nslab pick a free port",
            )
            port = None
        fabric = value.get("fabric", "full")
        if fabric not in FABRIC_VIEWS:
            self.bad(
                self.origin(value, "fabric", "topology.controller.fabric"),
                f"controller fabric must be {' or '.join(FABRIC_VIEWS)}, got {_show(fabric)}",
                "`switches-only` hides hosts (MACs, attachment ports) from the controller's "
                "fabric.json; leave it out for the full view",
            )
            fabric = "full"
        return Controller(app=app, port=port, fabric=fabric, origin=o)

    def _controller_from_labels(self, tp: LMap) -> Controller | None:
        """`nslab export` writes the controller as labels of kinds.ovs-bridge (the
        containerlab schema has no place for it at the top)."""
        kd = tp.get("kinds")
        ovs = kd.get("ovs-bridge") if isinstance(kd, dict) else None
        labels = ovs.get("labels") if isinstance(ovs, dict) else None
        if not isinstance(labels, dict) or f"{LABEL_PREFIX}controller" not in labels:
            return None
        o = self.origin(labels, f"{LABEL_PREFIX}controller", "topology.kinds.ovs-bridge.labels")
        port = labels.get(f"{LABEL_PREFIX}controller-port")
        try:
            port = int(port) if port is not None else None
        except ValueError:
            self.bad(o, f"bad controller port label {port!r}", "write a number 1-65535")
            port = None
        fabric = str(labels.get(f"{LABEL_PREFIX}controller-fabric", "full"))
        if fabric not in FABRIC_VIEWS:
            self.bad(o, f"bad controller fabric label {fabric!r}", " or ".join(FABRIC_VIEWS))
            fabric = "full"
        return Controller(
            app=str(labels[f"{LABEL_PREFIX}controller"]), port=port, fabric=fabric, origin=o
        )

    # -- nodes ---------------------------------------------------------------
    def _nodes(self, tp: LMap, topo: Topology) -> None:
        nodes = tp.get("nodes")
        if not nodes:
            self.bad(
                self.origin(tp, "nodes", "topology.nodes")
                if "nodes" in tp
                else Origin(self.file, self.raw.line_of("topology"), "topology.nodes"),
                "missing or empty `nodes`" if "nodes" in tp else "missing `nodes`",
                "list the nodes under `topology: nodes:`, e.g. `h1: {kind: linux}`",
            )
            return
        if (
            self.mapping(nodes, self.origin(tp, "nodes", "topology.nodes"), "topology.nodes")
            is None
        ):
            return
        defaults = (
            self.mapping(
                tp.get("defaults"),
                self.origin(tp, "defaults", "topology.defaults"),
                "topology.defaults",
            )
            or LMap()
        )
        kind_defaults = (
            self.mapping(
                tp.get("kinds"), self.origin(tp, "kinds", "topology.kinds"), "topology.kinds"
            )
            or LMap()
        )
        for kname, kval in list(kind_defaults.items()):
            self.mapping(
                kval,
                self.origin(kind_defaults, kname, f"topology.kinds.{kname}"),
                f"topology.kinds.{kname}",
            )
        for name, spec in nodes.items():
            path = f"topology.nodes.{name}"
            o = self.origin(nodes, name, path)
            if spec is not None and not isinstance(spec, dict):
                self.bad(
                    o, f"node must be a mapping, got {_show(spec)}", "e.g. `h1: {kind: linux}`"
                )
                spec = LMap()
            spec = spec if spec is not None else LMap()
            node = self._node(str(name), spec, defaults, kind_defaults, path, o, topo)
            topo.nodes[node.name] = node

    def _node(
        self,
        name: str,
        spec: LMap,
        defaults: LMap,
        kind_defaults: LMap,
        path: str,
        o: Origin,
        topo: Topology,
    ) -> Node:
        kind_name = spec.get("kind", defaults.get("kind", DEFAULT_KIND))
        kind_origin = (
            self.origin(spec, "kind", f"{path}.kind")
            if "kind" in spec
            else self.origin(defaults, "kind", "topology.defaults.kind")
            if "kind" in defaults
            else o
        )
        self.origins[f"node:{name}:kind"] = kind_origin
        kind_name = str(kind_name)
        kind = kinds.get(kind_name)
        layer_kind = (
            kind_defaults.get(kind_name)
            if isinstance(kind_defaults.get(kind_name), dict)
            else LMap()
        )
        layers = [
            (defaults, "topology.defaults", True),
            (layer_kind, f"topology.kinds.{kind_name}", False),
            (spec, path, False),
        ]
        node = Node(name=name, kind=kind_name, origin=o)
        values: dict[str, Any] = {}
        for layer, lpath, is_default in layers:
            for key, value in layer.items():
                key = str(key)
                ko = self.origin(layer, key, f"{lpath}.{key}")
                if key == "kind":
                    continue
                if key in NSLAB_NODE_KEYS:
                    if kind is not None and key not in kind.allowed_keys:
                        if is_default:  # defaults apply to every kind: skip what does not fit
                            continue
                        self.bad(
                            ko,
                            f"'{key}' does not apply to kind {kind_name}",
                            f"{kind_name} takes: {_keys(kind.allowed_keys)}",
                        )
                        continue
                elif kind is not None and key in kind.allowed_keys:
                    pass  # a kind's own key: kept in node.config for its module
                elif key not in kinds.CONTAINERLAB_NODE_KEYS:
                    if is_default and any(
                        key in k.allowed_keys for k in kinds.all_kinds().values()
                    ):
                        continue  # another kind's key in `defaults`: not for this node
                    allowed = set(kinds.CONTAINERLAB_NODE_KEYS) | (
                        set(kind.allowed_keys) if kind else NSLAB_NODE_KEYS
                    )
                    self.bad(
                        ko,
                        f"unknown node key '{key}'",
                        f"{fix_hint(key, allowed)}nslab keys for {kind_name}: "
                        f"{_keys(kind.allowed_keys) if kind else _keys(NSLAB_NODE_KEYS)}; "
                        "containerlab's node keys are accepted too",
                    )
                    continue
                if (
                    key in ("env", "labels")
                    and isinstance(value, dict)
                    and isinstance(values.get(key), dict)
                ):
                    merged = dict(values[key])  # containerlab merges maps across levels
                    merged.update(value)
                    value = merged
                values[key] = value
                self.origins[f"node:{name}:{key}"] = ko
        for key, value in values.items():
            ko = self.origins[f"node:{name}:{key}"]
            if key == "image":
                if isinstance(value, str):
                    node.image = value
                else:
                    self.bad(
                        ko,
                        f"image must be a string, got {_show(value)}",
                        "e.g. `image: nslab/host:latest`",
                    )
            elif key == "exec":
                if isinstance(value, str):
                    value = [value]
                if isinstance(value, list) and all(isinstance(c, str) for c in value):
                    node.exec = list(value)
                else:
                    self.bad(
                        ko, "exec must be a list of command strings", 'e.g. `exec: ["ip link"]`'
                    )
            elif key in ("env", "labels"):
                if isinstance(value, dict):
                    setattr(node, key, {str(k): _scalar_str(v) for k, v in value.items()})
                else:
                    self.bad(
                        ko,
                        f"{key} must be a mapping, got {_show(value)}",
                        f"write `{key}: {{NAME: value}}`",
                    )
            elif key in NSLAB_NODE_KEYS:
                node.config[f"_nslab_{key}"] = value  # interpreted once links are known
            else:
                node.config[key] = plain(value)
        self._labels(node)
        return node

    def _labels(self, node: Node) -> None:
        """Move nslab.* labels (written by `nslab export`) into the nslab keys."""
        lo = self.origins.get(f"node:{node.name}:labels", node.origin)
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
                    value = (
                        NO_ADDRESS if value == NO_ADDRESS else [v for v in value.split(",") if v]
                    )
                if iface:
                    ifaces.setdefault(iface, {})[key] = value
                elif key == "ip":
                    node.config.setdefault("_nslab_ip", value)
                else:
                    self.bad(lo, f"label '{label}' needs an interface", "write nslab.mac.eth0")
            elif key in ("controller", "controller-port", "controller-fabric"):
                pass  # read from topology.kinds.ovs-bridge by _controller_from_labels
            elif kind is not None and rest in kind.allowed_keys:
                try:  # a kind's own key, exported as YAML text
                    node.config.setdefault(rest, yaml.safe_load(value))
                except yaml.YAMLError:
                    self.bad(lo, f"label '{label}' is not YAML", "re-export the topology")
            else:
                self.bad(
                    lo,
                    f"unknown nslab label '{label}'",
                    "nslab labels are nslab.ip[.IFACE], nslab.mac.IFACE, nslab.gateway, nslab.dpid",
                )
            self.origins.setdefault(f"node:{node.name}:label:{rest}", lo)

    # -- links ----------------------------------------------------------------
    def _links(self, tp: LMap, topo: Topology) -> None:
        links = tp.get("links")
        if links is None:
            return  # a lab of unconnected nodes is odd but legal
        lo = self.origin(tp, "links", "topology.links")
        if not isinstance(links, list):
            self.bad(
                lo,
                f"links must be a list, got {_show(links)}",
                'write `- endpoints: ["h1:eth0", "s1:eth1"]` items',
            )
            return
        for i, spec in enumerate(links):
            path = f"topology.links[{i}]"
            o = self.origin(links, i, path)
            if not isinstance(spec, dict):
                self.bad(
                    o,
                    f"a link must be a mapping, got {_show(spec)}",
                    'write `- endpoints: ["h1:eth0", "s1:eth1"]`',
                )
                continue
            link = self._link(i, spec, path, o, topo)
            if link is not None:
                topo.links.append(link)

    def _link(self, i: int, spec: LMap, path: str, o: Origin, topo: Topology) -> Link | None:
        for key in spec:
            if key not in LINK_KEYS:
                self.bad(
                    self.origin(spec, key, f"{path}.{key}"),
                    f"unknown link key '{key}'",
                    f"{fix_hint(key, LINK_KEYS)}link keys: endpoints, "
                    + ", ".join(LINK_PARAM_KEYS)
                    + " (or the same under `vars:`), mtu, ipv4",
                )
        ltype = spec.get("type", "veth")
        if ltype != "veth":
            self.bad(
                self.origin(spec, "type", f"{path}.type"),
                f"link type '{ltype}' is not supported",
                "nslab builds veth links only: drop `type` or use `type: veth`",
            )
            return None
        eps = spec.get("endpoints")
        eo = self.origin(spec, "endpoints", f"{path}.endpoints") if "endpoints" in spec else o
        if not isinstance(eps, list) or len(eps) != 2:
            self.bad(
                eo,
                f"a link needs exactly two endpoints, got {_show(eps)}",
                'write `endpoints: ["h1:eth0", "s1:eth1"]`',
            )
            return None
        ends: list[Endpoint] = []
        extra: list[dict[str, Any]] = []
        for j, ep in enumerate(eps):
            epath = f"{path}.endpoints[{j}]"
            eop = self.origin(eps, j, epath)
            parsed = self._endpoint(ep, eop, epath)
            if parsed is None:
                return None
            ends.append(parsed[0])
            extra.append(parsed[1])
        link = Link(ends[0], ends[1], self._params(spec, path), origin=o)
        for j, end in enumerate(ends):
            self.origins[f"{path}.endpoints[{j}]"] = self.origin(eps, j, f"{path}.endpoints[{j}]")
            self._attach(end, topo, self.origins[f"{path}.endpoints[{j}]"])
        # containerlab's per-endpoint addresses: `ipv4: [a, b]` or extended endpoint objects
        v4 = spec.get("ipv4")
        if v4 is not None:
            vo = self.origin(spec, "ipv4", f"{path}.ipv4")
            if not isinstance(v4, list) or len(v4) > 2:
                self.bad(
                    vo,
                    "ipv4 must be a list of up to two CIDRs (one per endpoint)",
                    'e.g. `ipv4: ["10.0.0.1/24", "10.0.0.2/24"]`',
                )
            else:
                for j, addr in enumerate(v4):
                    if addr:
                        extra[j].setdefault("ipv4", addr)
                        extra[j]["_origin"] = self.origin(v4, j, f"{path}.ipv4[{j}]")
        for j, end in enumerate(ends):
            e = extra[j]
            eorigin = e.get("_origin", self.origins[f"{path}.endpoints[{j}]"])
            settings: dict[str, Any] = {}
            if "ipv4" in e:
                settings["ip"] = e["ipv4"]
            if "mac" in e:
                settings["mac"] = e["mac"]
            if settings:
                self._pending(end.node, end.iface, settings, eorigin)
        for key in ("mtu", "ipv6", "labels"):
            if key in spec:
                link.config[key] = plain(spec[key])
                self.origins[f"{path}.{key}"] = self.origin(spec, key, f"{path}.{key}")
        return link

    def _endpoint(self, ep: Any, o: Origin, path: str) -> tuple[Endpoint, dict[str, Any]] | None:
        if isinstance(ep, dict):  # containerlab's extended form
            node, iface = ep.get("node"), ep.get("interface")
            if not isinstance(node, str) or not isinstance(iface, str) or not node or not iface:
                self.bad(
                    o,
                    "an endpoint object needs `node` and `interface`",
                    "e.g. `{node: h1, interface: eth0}`",
                )
                return None
            for key in ep:
                if key not in ("node", "interface", "mac", "ipv4", "ipv6", "vars"):
                    self.bad(
                        self.origin(ep, key, f"{path}.{key}"),
                        f"unknown endpoint key '{key}'",
                        "endpoint keys: node, interface, mac, ipv4",
                    )
            extra = {k: ep[k] for k in ("mac", "ipv4") if k in ep}
            return Endpoint(node, iface), extra
        if not isinstance(ep, str) or ep.count(":") != 1 or ep.startswith(":") or ep.endswith(":"):
            self.bad(
                o, f"malformed endpoint {_show(ep)}", 'write it as "node:interface", e.g. "h1:eth0"'
            )
            return None
        node, iface = ep.split(":")
        return Endpoint(node, iface), {}

    def _attach(self, end: Endpoint, topo: Topology, o: Origin) -> None:
        node = topo.nodes.get(end.node)
        if node is None or end.iface in node.interfaces:
            return  # reported by validate: unknown node / interface used twice
        node.interfaces[end.iface] = Interface(name=end.iface, node=end.node, origin=o)

    def _params(self, spec: LMap, path: str) -> LinkParams:
        params = LinkParams()
        vars_ = spec.get("vars")
        if vars_ is not None and not isinstance(vars_, dict):
            self.bad(
                self.origin(spec, "vars", f"{path}.vars"),
                "vars must be a mapping",
                "e.g. `vars: {bw: 100}`",
            )
            vars_ = None
        for key in LINK_PARAM_KEYS:
            sources = []
            if key in spec:
                sources.append((spec[key], self.origin(spec, key, f"{path}.{key}")))
            if vars_ and key in vars_:
                sources.append((vars_[key], self.origin(vars_, key, f"{path}.vars.{key}")))
            if not sources:
                continue
            value, ko = sources[0]
            if len(sources) == 2 and sources[1][0] != value:
                self.bad(
                    sources[1][1],
                    f"{key} is set twice with different values ({value!r}, {sources[1][0]!r})",
                    f"keep `{key}` in one place",
                )
            self.origins[f"{path}.{key}"] = ko
            parsed = self._param(key, value, ko)
            if parsed is not None:
                setattr(params, key, parsed)
        return params

    def _param(self, key: str, value: Any, o: Origin) -> Any:
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
                self.bad(
                    o,
                    f"{key} must be a number ({unit}), got {_show(value)}",
                    f"write e.g. `{key}: {100 if key == 'bw' else 0.5}`",
                )
                return None
            return float(value)
        if key == "max_queue":
            if isinstance(value, bool) or not isinstance(value, int):
                self.bad(
                    o,
                    f"max_queue must be a whole number of packets, got {_show(value)}",
                    "write e.g. `max_queue: 1000`",
                )
                return None
            return value
        # delay / jitter: tc time strings, range-checked in validate
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.bad(
                o,
                f"{key} must be a time like 5ms, got {_show(value)}",
                "write e.g. `5ms` or `100us`",
            )
            return None
        return str(value)

    # -- addresses --------------------------------------------------------------
    def _pending(self, node: str, iface: str, settings: dict[str, Any], o: Origin) -> None:
        self.pending.append((node, iface, settings, o))

    def _apply_addresses(self, topo: Topology) -> None:
        """Apply `ip`, `interfaces:`, labels and link ipv4 now that interfaces exist."""
        for node in topo.nodes.values():
            cfg = node.config
            ifaces = cfg.pop("_nslab_interfaces", None)
            io = self.origins.get(f"node:{node.name}:interfaces", node.origin)
            label_ifaces = cfg.pop("_nslab_label_ifaces", {})
            if ifaces is not None and not isinstance(ifaces, dict):
                self.bad(
                    io,
                    f"interfaces must be a mapping, got {_show(ifaces)}",
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
                    self.bad(
                        iorigin,
                        f"interface settings must be a mapping, got {_show(ispec)}",
                        f"e.g. `{iname}: {{ip: 10.0.0.1/24}}`",
                    )
                    continue
                for key in ispec:
                    if key not in IFACE_KEYS:
                        self.bad(
                            Origin(io.file, _line(ispec, key, iorigin), f"{ipath}.{key}"),
                            f"unknown interface key '{key}'",
                            "interface keys: ip, mac",
                        )
                if str(iname) not in node.interfaces:
                    linked = ", ".join(node.interfaces) or "none"
                    self.bad(
                        iorigin,
                        f"unknown interface '{iname}': no link uses {node.name}:{iname}",
                        f"{fix_hint(iname, node.interfaces)}add a link with endpoint "
                        f'"{node.name}:{iname}" or fix the name (linked interfaces: {linked})',
                    )
                    continue
                for key in ("ip", "mac"):
                    if key in ispec:
                        self._pending(
                            node.name,
                            str(iname),
                            {key: ispec[key]},
                            Origin(io.file, _line(ispec, key, iorigin), f"{ipath}.{key}"),
                        )
            ip = cfg.pop("_nslab_ip", None)
            has_ip = f"node:{node.name}:ip" in self.origins or ip is not None
            if ip is not None or has_ip:
                o = self.origins.get(f"node:{node.name}:ip", node.origin)
                if ip is None or (isinstance(ip, str) and ip.lower() == NO_ADDRESS) or ip == []:
                    self.no_address.add(node.name)
                elif not node.interfaces:
                    self.bad(
                        o,
                        f"{node.name} has an address but no link",
                        f'add a link such as endpoints: ["{node.name}:eth0", "s1:eth1"]',
                    )
                else:
                    first = "eth0" if "eth0" in node.interfaces else next(iter(node.interfaces))
                    self._pending(node.name, first, {"ip": ip}, o)
            gw = cfg.pop("_nslab_gateway", None)
            if gw is not None:
                go = self.origins.get(f"node:{node.name}:gateway", node.origin)
                try:
                    node.gateway = ipaddress.IPv4Address(str(gw))
                except ValueError:
                    self.bad(
                        go,
                        f"bad gateway '{gw}': not an IPv4 address",
                        "write an address without prefix, e.g. 10.0.0.1",
                    )
            dpid = cfg.pop("_nslab_dpid", None)
            if dpid is not None:
                do = self.origins.get(f"node:{node.name}:dpid", node.origin)
                node.dpid = _dpid(dpid)
                if node.dpid is None:
                    self.bad(
                        do, f"bad dpid {_show(dpid)}", "write a number (1, 2, ...) or hex like 0x1a"
                    )
        for node_name, iface, settings, o in self.pending:
            self._settle(topo, node_name, iface, settings, o)

    def _settle(
        self, topo: Topology, node_name: str, iface: str, settings: dict[str, Any], o: Origin
    ) -> None:
        node = topo.nodes.get(node_name)
        if node is None or iface not in node.interfaces:
            return
        intf = node.interfaces[iface]
        kind = kinds.get(node.kind)
        if "ip" in settings:
            value = settings["ip"]
            if isinstance(value, str) and value.lower() == NO_ADDRESS:
                self.no_address.add(node_name)
                return
            values = value if isinstance(value, list) else [value]
            if kind is not None and kind.root_namespace and values:
                self.bad(
                    o,
                    f"{node.kind} ports carry no IP address",
                    "put the address on a host (kind linux) instead",
                )
                return
            for v in values:
                try:
                    addr = ipaddress.IPv4Interface(str(v))
                except ValueError:
                    self.bad(
                        o,
                        f"bad CIDR {_show(v)}",
                        "write an IPv4 address with prefix length, e.g. 10.0.0.1/24",
                    )
                    continue
                if "/" not in str(v):
                    self.bad(
                        o, f"address '{v}' has no prefix length", f"write it as a CIDR, e.g. {v}/24"
                    )
                    continue
                net = addr.network
                if net.prefixlen < 31 and addr.ip in (net.network_address, net.broadcast_address):
                    self.bad(
                        o,
                        f"{addr} is the network or broadcast address of {net}",
                        "pick a host address inside the network",
                    )
                    continue
                if addr not in intf.ips:
                    intf.ips.append(addr)
                    self.origins[f"ip:{addr.ip}:{node_name}:{iface}"] = o
                self.used_ips.add(addr.ip)
        if "mac" in settings:
            mac = settings["mac"]
            if not isinstance(mac, str):
                self.bad(
                    o,
                    f"MAC {_show(mac)} was read as a number (YAML 1.1 reads some xx:xx:.. as base 60)",
                    'quote it: mac: "02:00:00:00:00:01"',
                )
            elif not MAC_RE.match(mac):
                self.bad(o, f"bad MAC '{mac}'", 'write six hex bytes, e.g. "02:00:00:00:00:01"')
            elif int(mac[:2], 16) & 1:
                self.bad(
                    o,
                    f"MAC '{mac}' is a multicast address (first byte odd)",
                    'use a unicast, locally administered one such as "02:..."',
                )
            else:
                intf.mac = mac.lower()
                self.origins[f"mac:{node_name}:{iface}"] = o

    def _auto_addresses(self, topo: Topology, subnet: ipaddress.IPv4Network) -> None:
        pool = (ip for ip in subnet.hosts() if ip not in self.used_ips)
        for node in topo.nodes.values():
            kind = kinds.get(node.kind)
            if kind is None or kind.role != "host" or not node.interfaces:
                continue
            if node.name in self.no_address or node.ips:
                continue
            ip = next(pool, None)
            if ip is None:
                self.bad(
                    self.origins.get("topology.subnet", node.origin),
                    f"subnet {subnet} has no free address left for {node.name}",
                    "use a larger `subnet` or give the host an explicit `ip`",
                )
                return
            first = "eth0" if "eth0" in node.interfaces else next(iter(node.interfaces))
            node.interfaces[first].ips.append(ipaddress.IPv4Interface(f"{ip}/{subnet.prefixlen}"))

    def _auto_dpids(self, topo: Topology) -> None:
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


def build(
    raw: Any, file: str, lab_name: str | None = None, default_name: str = "lab"
) -> tuple[Built, Problems]:
    """Build a Topology from parsed YAML. Returns it with the problems found so far."""
    b = _Builder(raw, file, lab_name, default_name)
    built = b.build()
    return built, b.problems


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


def _scalar_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if value is None:
        return "nothing"
    return repr(value)


def _keys(keys: Any) -> str:
    return ", ".join(sorted(keys)) or "(none)"
