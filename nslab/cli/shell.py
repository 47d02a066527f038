"""nslab shell [--name LAB] NODE: an interactive shell inside a node."""

from __future__ import annotations

import argparse
import os
import subprocess

from nslab.cli.exec import find_lab
from nslab.errors import NslabError

VERB = "shell"
HELP = "open an interactive shell inside a node of a running lab"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="lab name (optional when exactly one lab runs)")
    p.add_argument("where", nargs="+", metavar="[LAB] NODE", help="node, or lab and node")


def run(args: argparse.Namespace) -> int:
    if len(args.where) > 2:
        raise NslabError("usage: sudo nslab shell [--name LAB] NODE  or  sudo nslab shell LAB NODE")
    args.node = args.where[-1]
    lab = find_lab(args.where[0] if len(args.where) == 2 else args.name)
    inside = lab.container_cmd(args.node)
    if inside:  # a container: its own shell, filesystem and tools
        from nslab import containers

        return subprocess.call([*containers.exec_cmd(lab.name, args.node, interactive=True), "sh"])
    env = {**lab.env(), "PS1": f"{args.node}@{lab.name}:\\w# "}
    shell = os.environ.get("SHELL", "/bin/bash")
    return subprocess.call(
        lab.command(args.node, [shell, "--norc"] if "bash" in shell else [shell]), env=env
    )
