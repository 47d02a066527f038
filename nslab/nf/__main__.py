"""Run an NF configuration: python -m nslab.nf CONFIG [name=value ...] [--name NF] [--report PATH]."""

from __future__ import annotations

import argparse
import sys

from nslab.errors import NslabError
from nslab.nf.config import load
from nslab.nf.router import IO_BACKENDS, main_for


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nslab.nf", description=__doc__)
    ap.add_argument("config", help="configuration file (Click-like syntax)")
    ap.add_argument("params", nargs="*", help="name=value pairs substituted for $name")
    ap.add_argument("--name", help="NF name (default: the file's stem)")
    ap.add_argument("--report", help="report path (default: <name>.report)")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    ap.add_argument("--io", choices=IO_BACKENDS, help="frame I/O: afpacket (default) or afxdp")
    a = ap.parse_args(argv)
    params = {}
    for p in a.params:
        if "=" not in p:
            print(f"parameter {p!r}: expected name=value", file=sys.stderr)
            return 2
        k, v = p.split("=", 1)
        params[k] = v
    try:
        r = load(a.config, params, name=a.name)
    except NslabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.io:
        r.io = a.io
    r.report_path = __import__("pathlib").Path(a.report or f"{r.name}.report")
    return main_for(r, a.duration)


if __name__ == "__main__":
    sys.exit(main())
