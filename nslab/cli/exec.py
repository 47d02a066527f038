"""nslab exec [--name LAB] NODE -- CMD: run a command inside a node."""

from __future__ import annotations

import argparse
import subprocess

from nslab.engine import Lab, running_labs
from nslab.errors import NslabError

VERB = "exec"
HELP = "run a command inside a node of a running lab"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="lab name (optional when exactly one lab runs)")
    p.add_argument("node")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="command (after --)")


def find_lab(name: str | None) -> Lab:
    if name:
        return Lab.attach(name)
    labs = running_labs()
    if len(labs) != 1:
        raise NslabError(
            f"say which lab with --name (running: {', '.join(lab.name for lab in labs) or 'none'})"
        )
    return labs[0]


def run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise NslabError("no command given: nslab exec NODE -- CMD ...")
    lab = find_lab(args.name)
    return subprocess.call(lab.command(args.node, cmd), env=lab.env())
