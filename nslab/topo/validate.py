"""Whole-model checks, run before anything is created on the host.

`check()` works on any Topology (from a file or built in Python); given the
`origins` the builder recorded it names the exact line of each value,
otherwise the line of the node or link.
"""

from __future__ import annotations

import re
from collections import defaultdict

from nslab import kinds
from nslab.errors import TopologyError
from nslab.problems import Problem, Problems
from nslab.topo.context import Built, fix_hint
from nslab.topo.model import IFNAMSIZ, Origin, Topology
from nslab.topo.names import (
    IFACE_NAME_RE,
    LAB_NAME_RE,
    NODE_NAME_RE,
    bridge_name,
    root_ifname,
)

MAX_BW = 100_000.0  # Mbit/s: beyond this tc HTB on veths is meaningless here
MAX_DELAY_US = 10_000_000  # 10 s
MAX_QUEUE = 1_000_000
_TIME_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(us|usec|usecs|ms|msec|msecs|s|sec|secs)$")
_UNIT_US = {
    "us": 1,
    "usec": 1,
    "usecs": 1,
    "ms": 1000,
    "msec": 1000,
    "msecs": 1000,
    "s": 1_000_000,
    "sec": 1_000_000,
    "secs": 1_000_000,
}


def tc_time_us(text: str) -> float | None:
    """Microseconds in a tc time string like '5ms', or None if it is not one."""
    m = _TIME_RE.match(text.strip())
    return float(m.group(1)) * _UNIT_US[m.group(2)] if m else None


def check(built: Built | Topology, problems: Problems | None = None) -> Problems:
    """Add every problem of the model to `problems` (a new collector if None)."""
    if isinstance(built, Topology):
        built = Built(built)
    problems = problems if problems is not None else Problems()
    topo = built.topo
    src = topo.source

    def at(key: str, fallback: Origin) -> Origin:
        return built.origins.get(key, fallback)

    # lab name
    name_origin = at("name", Origin(src, None, "name"))
    if not LAB_NAME_RE.match(topo.name):
        problems.add(
            name_origin,
            f"lab name '{topo.name}' is not allowed",
            "use lowercase letters, digits and '-' (starting with a letter or digit), "
            "e.g. pass `--name lab1`",
        )
    lab = topo.name

    known = kinds.all_kinds()
    for node in topo.nodes.values():
        no = node.origin
        if not NODE_NAME_RE.match(node.name):
            problems.add(
                no,
                f"node name '{node.name}' has characters nslab cannot use",
                "use letters, digits, '_' and '-', starting with a letter or digit",
            )
        kind = known.get(node.kind)
        if kind is None:
            problems.add(
                at(f"node:{node.name}:kind", no),
                f"unknown kind '{node.kind}'",
                f"{fix_hint(node.kind, known)}known kinds: {', '.join(known)}",
            )
            continue
        for found in kind.validate(node, topo):
            problems.append(_kind_problem(found, node.name, no, at))
        if kind.root_namespace:
            br = bridge_name(lab, node.name)
            if len(br) > IFNAMSIZ:
                problems.add(
                    no,
                    f"bridge name '{br}' ({len(br)} chars, from lab name '{lab}') "
                    f"is longer than Linux's {IFNAMSIZ}",
                    "use a shorter lab name (`--name`) or node name",
                )
            if node.dpid is not None and not kind.openflow:
                problems.add(
                    at(f"node:{node.name}:dpid", no),
                    f"kind {node.kind} has no datapath id",
                    "remove `dpid` or use kind ovs-bridge",
                )
        for iface in node.interfaces.values():
            io = iface.origin
            if not IFACE_NAME_RE.match(iface.name):
                problems.add(
                    io,
                    f"interface name '{iface.name}' has characters Linux cannot use",
                    "use letters, digits, '_', '-' and '.', e.g. eth1",
                )
            if kind.root_namespace:
                full = root_ifname(lab, node.name, iface.name)
                if len(full) > IFNAMSIZ:
                    problems.add(
                        io,
                        f"interface name '{full}' ({len(full)} chars: <lab>-<node>-<iface> "
                        f"with lab name '{lab}') is longer than Linux's {IFNAMSIZ}",
                        "use a shorter lab name (`--name`), node name or interface name",
                    )
            elif len(iface.name) > IFNAMSIZ:
                problems.add(
                    io,
                    f"interface name '{iface.name}' is longer than Linux's {IFNAMSIZ}",
                    "use a shorter name such as eth1",
                )

    # links: endpoints, interfaces used twice, parameters
    used: dict[tuple[str, str], Origin] = {}
    for i, link in enumerate(topo.links):
        for j, end in enumerate(link.endpoints):
            eo = at(f"{link.origin.key}.endpoints[{j}]", link.origin)
            if end.node not in topo.nodes:
                problems.add(
                    eo,
                    f"link to unknown node '{end.node}'",
                    f"{fix_hint(end.node, topo.nodes)}define it under topology.nodes "
                    "or fix the endpoint",
                )
                continue
            key = (end.node, end.iface)
            if key in used:
                first = used[key]
                problems.add(
                    eo,
                    f"interface {end} is used by two links (first at line {first.line})",
                    "give each link its own interface, e.g. eth2",
                )
            else:
                used[key] = eo
        _check_params(i, link, at, problems)

    # addresses: clashes, gateways
    owners: dict[object, list[tuple[str, str]]] = defaultdict(list)
    for node in topo.nodes.values():
        for iface in node.interfaces.values():
            for ip in iface.ips:
                owners[ip.ip].append((node.name, iface.name))
    for ip, where in owners.items():
        if len(where) > 1:
            names = ", ".join(f"{n}:{i}" for n, i in where)
            for n, i in where[1:]:
                o = at(f"ip:{ip}:{n}:{i}", topo.nodes[n].interfaces[i].origin)
                problems.add(
                    o,
                    f"address {ip} is used by {names}",
                    "give every interface its own address (or leave hosts without `ip` to auto-assign)",
                )
    for node in topo.nodes.values():
        if node.gateway is None:
            continue
        go = at(f"node:{node.name}:gateway", node.origin)
        if not any(node.gateway in ip.network for ip in node.ips):
            nets = ", ".join(str(ip.network) for ip in node.ips) or "none"
            problems.add(
                go,
                f"gateway {node.gateway} is not in any subnet of {node.name} ({nets})",
                "pick a gateway inside one of the node's networks, or fix its prefix length",
            )
    return problems


def _kind_problem(found: Problem | str, node: str, no: Origin, at) -> Problem:
    """A kind's problem with `node`. Kinds may return a Problem (kept as is) or,
    the older way, a string: one that starts with the node's origin already names
    file, line and key; otherwise it reads 'key: what — fix' and goes on the
    line where `key` was written."""
    if isinstance(found, Problem):
        return found
    if found.startswith(f"{no}: "):
        return Problem.at(no, found[len(f"{no}: ") :])
    key = found.partition(": ")[0]
    return Problem.at(at(f"node:{node}:{key}", no), found)


def _check_params(i: int, link, at, problems: Problems) -> None:
    p = link.params

    def o(key: str) -> Origin:
        return at(f"{link.origin.key}.{key}", link.origin)

    if p.bw is not None and not 0 < p.bw <= MAX_BW:
        problems.add(
            o("bw"), f"bw {p.bw:g} Mbit/s is out of range", f"use 0 < bw <= {MAX_BW:g} (Mbit/s)"
        )
    if p.loss is not None and not 0 <= p.loss <= 100:
        problems.add(
            o("loss"), f"loss {p.loss:g} is out of range", "loss is a percentage: 0 to 100"
        )
    if p.max_queue is not None and not 1 <= p.max_queue <= MAX_QUEUE:
        problems.add(
            o("max_queue"),
            f"max_queue {p.max_queue} is out of range",
            f"use 1 to {MAX_QUEUE} packets",
        )
    for key in ("delay", "jitter"):
        value = getattr(p, key)
        if value is None:
            continue
        us = tc_time_us(value)
        if us is None:
            problems.add(
                o(key),
                f"{key} '{value}' is not a tc time",
                "write a number with a unit: 5ms, 100us, 1s",
            )
        elif us > MAX_DELAY_US:
            problems.add(o(key), f"{key} {value} is more than 10 s", "use at most 10s")
    if p.jitter is not None and p.delay is None:
        problems.add(o("jitter"), "jitter without delay", "netem varies a delay: set `delay` too")


def validate(built: Built | Topology) -> None:
    """Raise TopologyError with every problem of the model, if any."""
    problems = check(built)
    if problems:
        raise TopologyError(problems.messages())
