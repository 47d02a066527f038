"""`nslab graph`: draw a topology (Graphviz) as SVG, PNG, PDF or DOT."""

from __future__ import annotations

import argparse

from nslab.cli._common import add_params
from nslab.topo import load, parse_params
from nslab.topo.graph import render

VERB = "graph"
HELP = "draw a topology as a picture (svg, png, pdf) or Graphviz DOT text"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topology", metavar="TOPO", help="topology name (e.g. fat-tree, nfv) or file")
    add_params(p)
    p.add_argument("--name", help="lab name (changes only the title)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="output file; the format comes from its suffix: .svg, .png, .pdf or .dot",
    )


def run(args: argparse.Namespace) -> int:
    topo = load(args.topology, parse_params(args.param), lab_name=args.name)
    out = render(topo, args.output)
    print(f"wrote {out} ({len(topo.nodes)} nodes, {len(topo.links)} links)")
    return 0
