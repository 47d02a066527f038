"""nslab down [NAME | --all]: tear a lab down, removing exactly what it created."""

from __future__ import annotations

import argparse
import sys

from nslab.engine import Lab, down_all, running_labs
from nslab.errors import NslabError

VERB = "down"
HELP = "stop a lab (or --all labs) and remove everything it created"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="lab name (optional when exactly one lab runs)")
    p.add_argument("--all", action="store_true", help="stop every nslab lab and leftover")


def _progress(msg: str) -> None:
    print(f"[nslab] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.all:
        stopped = down_all(_progress)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    name = args.name
    if not name:
        labs = running_labs()
        if len(labs) != 1:
            raise NslabError(
                "name the lab to stop (running: "
                f"{', '.join(lab.name for lab in labs) or 'none'}), or use --all"
            )
        name = labs[0].name
    Lab.attach(name).down(_progress)
    print(f"lab {name} is down")
    return 0
