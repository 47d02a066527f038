"""A picture of a topology: DOT text, rendered by Graphviz `dot`.

Each kind has its own shape and colour (Kind.graph_style); a node with an
`image` (a container) is drawn as a 3-D box. Links show their shaping
(bw, delay, loss) and, small at each end, the interface names.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from nslab import kinds
from nslab.errors import NslabError
from nslab.topo.model import Link, Node, Topology

FORMATS = ("svg", "png", "pdf", "dot")
DOT_TIMEOUT_S = 120


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(attrs: dict[str, str]) -> str:
    return "[" + ", ".join(f"{k}={_q(v)}" for k, v in attrs.items()) + "]"


def _node_label(node: Node) -> str:
    lines = [node.name]
    if node.dpid is not None:
        lines.append(f"dpid {node.dpid}")
    lines += [str(ip) for ip in node.ips]
    if node.image:
        lines.append(node.image)
    return "\n".join(lines)


def _link_label(link: Link) -> str:
    p = link.params
    parts = []
    if p.bw is not None:
        parts.append(f"{p.bw:g} Mbit/s")
    if p.delay:
        parts.append(p.delay + (f" ±{p.jitter}" if p.jitter else ""))
    if p.loss:
        parts.append(f"{p.loss:g}% loss")
    if p.max_queue is not None:
        parts.append(f"q {p.max_queue}")
    return "\n".join(parts)


def to_dot(topo: Topology) -> str:
    """Graphviz DOT text for `topo`."""
    out = [
        f"graph {_q(topo.name)} {{",
        f"  graph {_attrs({'label': f'{topo.name} ({Path(topo.source).name})', 'labelloc': 't', 'fontname': 'Helvetica', 'rankdir': 'TB', 'nodesep': '0.3'})};",
        f"  node {_attrs({'fontname': 'Helvetica', 'fontsize': '11'})};",
        f"  edge {_attrs({'fontname': 'Helvetica', 'fontsize': '9', 'color': '#555555'})};",
    ]
    hosts = []
    for node in topo.nodes.values():
        kind = kinds.get(node.kind)
        style = dict(kind.graph_style) if kind else {"shape": "octagon", "color": "red"}
        if node.image:
            style["shape"] = "box3d"
        style["label"] = _node_label(node)
        style["tooltip"] = f"{node.name} ({node.kind})"
        out.append(f"  {_q(node.name)} {_attrs(style)};")
        if kind is not None and kind.role == "host" and len(node.interfaces) <= 1:
            hosts.append(node.name)
    if hosts:  # end hosts along the bottom, fabric above: the usual datacenter picture
        out.append("  { rank=sink; " + " ".join(_q(h) for h in hosts) + " }")
    layer = _layers(topo, hosts)
    for link in topo.links:
        a, b = link.a, link.b
        if layer.get(b.node, 0) > layer.get(
            a.node, 0
        ):  # upper node first: dot ranks by edge direction
            a, b = b, a
        attrs = {
            "taillabel": a.iface,
            "headlabel": b.iface,
            "labelfontsize": "8",
            "labelfontcolor": "#777777",
        }
        label = _link_label(link)
        if label:
            attrs.update(label=label, penwidth="2", color="#b45309")
        out.append(f"  {_q(a.node)} -- {_q(b.node)} {_attrs(attrs)};")
    legend = sorted({n.kind for n in topo.nodes.values()})
    if legend:
        out.append("  subgraph cluster_legend {")
        out.append(f"    graph {_attrs({'label': 'kinds', 'fontsize': '9', 'color': '#cccccc'})};")
        for k in legend:
            kind = kinds.get(k)
            style = dict(kind.graph_style) if kind else {"shape": "octagon", "color": "red"}
            style.update(label=k, fontsize="9")
            out.append(f"    {_q('legend:' + k)} {_attrs(style)};")
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def _layers(topo: Topology, hosts: list[str]) -> dict[str, int]:
    """Hops from the nearest end host: the tiers of a datacenter fabric."""
    layer = {h: 0 for h in hosts}
    frontier = list(hosts)
    while frontier:
        nxt = []
        for name in frontier:
            for _, remote in topo.neighbours(name):
                if remote.node not in layer and remote.node in topo.nodes:
                    layer[remote.node] = layer[name] + 1
                    nxt.append(remote.node)
        frontier = nxt
    return layer


def render(topo: Topology, output: str | Path, fmt: str | None = None) -> Path:
    """Write a picture of `topo` to `output`; the format comes from its suffix
    (svg, png, pdf, dot) unless `fmt` is given."""
    output = Path(output)
    fmt = (fmt or output.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise NslabError(
            f"cannot draw '{output}': unknown format '{fmt}' — use a file ending in "
            + ", ".join(f".{f}" for f in FORMATS)
        )
    dot_text = to_dot(topo)
    if fmt == "dot":
        output.write_text(dot_text, encoding="utf-8")
        return output
    dot = shutil.which("dot")
    if dot is None:
        raise NslabError(
            "Graphviz `dot` is not installed — install it (`sudo apt-get install graphviz`, "
            "done by scripts/provision.sh), or write the DOT text with `-o FILE.dot`"
        )
    try:
        proc = subprocess.run(
            [dot, f"-T{fmt}", "-o", str(output)],
            input=dot_text,
            text=True,
            capture_output=True,
            timeout=DOT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise NslabError(
            f"Graphviz `dot` took over {DOT_TIMEOUT_S} s — write `-o FILE.dot` instead"
        ) from None
    if proc.returncode != 0:
        raise NslabError(f"Graphviz `dot` failed: {proc.stderr.strip()[:500]}")
    return output
