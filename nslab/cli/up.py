"""nslab up TOPO: bring a lab up and leave it running in the background."""

from __future__ import annotations

import argparse

from nslab.cli._common import add_params
from nslab.engine import up
from nslab.topo import parse_params

VERB = "up"
HELP = "bring up a topology as a running lab (returns when it is ready)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topology", help="topology name in topologies/ or a path to a YAML file")
    add_params(p)
    p.add_argument("--name", help="lab name (default: the topology's name)")
    p.add_argument(
        "--controller", help="OpenFlow controller app (name in controller/ or a .py path)"
    )
    p.add_argument(
        "--allow-degraded",
        action="store_true",
        help="come up even if the host lacks a feature the topology asks for (e.g. netem)",
    )


def run(args: argparse.Namespace) -> int:
    lab = up(
        args.topology,
        parse_params(args.param),
        name=args.name,
        controller=args.controller,
        allow_degraded=args.allow_degraded,
    )
    for warning in lab.degraded:
        print(f"warning: degraded: {warning}")
    hosts = [n for n in lab.topology.nodes if n in lab.state.hosts]
    print(
        f"lab {lab.name} is up: {len(hosts)} hosts, "
        f"{len(lab.topology.nodes) - len(hosts)} switches, {len(lab.topology.links)} links"
    )
    print(
        f"  sudo nslab status {lab.name}    sudo nslab exec --name {lab.name} NODE -- CMD    sudo nslab down {lab.name}"
    )
    return 0
