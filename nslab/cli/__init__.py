"""The `nslab` command line. One verb per module in this package (like
containerlab's cmd/): each module defines `VERB`, `HELP`, `add_arguments(p)`
and `run(args) -> int`. Modules are discovered, so adding a verb is adding a file."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from nslab.errors import NslabError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nslab", description="Emulated datacenters, labs and an autograder."
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    pkg = sys.modules[__name__]
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if not hasattr(mod, "VERB"):
            continue
        p = sub.add_parser(mod.VERB, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except NslabError as exc:
        print(f"nslab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("nslab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `nslab status | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
