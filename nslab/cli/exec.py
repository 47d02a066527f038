"""nslab exec [--name LAB] NODE -- CMD: run a command inside a node."""

from __future__ import annotations

import argparse
import os

from nslab.engine import Lab, running_labs
from nslab.errors import NslabError

VERB = "exec"
HELP = "run a command inside a node of a running lab"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="lab name (optional when exactly one lab runs)")
    p.add_argument(
        "--netns",
        action="store_true",
        help="for a container node: run this host's command in its network namespace "
        "instead of inside the container",
    )
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
        raise NslabError("no command given: sudo nslab exec NODE -- CMD ...")
    lab = find_lab(args.name)
    inside = None if args.netns else lab.container_cmd(args.node)
    argv = [*inside, *cmd] if inside else lab.command(args.node, cmd)
    # Become the command (nsenter execs it in turn): signals such as Ctrl-C or
    # SIGTERM then reach it directly, and its exit status is ours.
    os.execvpe(argv[0], argv, lab.env())
