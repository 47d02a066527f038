"""`nslab export`: write a topology (after templating and validation) as a containerlab file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nslab.cli._common import add_params
from nslab.errors import NslabError
from nslab.topo import list_topologies, load, parse_params, render, template
from nslab.topo.export import dump_containerlab

VERB = "export"
HELP = "write a topology as a containerlab file (or show a template rendered)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "topology", metavar="TOPO", nargs="?", help="topology name (see `--list`) or file"
    )
    p.add_argument(
        "--list", action="store_true", help="list the known topologies and their parameters"
    )
    add_params(p)
    p.add_argument("--name", help="lab name to write instead of the file's `name`")
    p.add_argument(
        "--format",
        choices=["containerlab", "rendered"],
        default="containerlab",
        help="containerlab: a file containerlab's schema accepts and nslab reloads as the "
        "same model (default); rendered: the template's YAML text as nslab reads it, "
        "with the line numbers error messages refer to",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")


def run(args: argparse.Namespace) -> int:
    if args.list:
        return _list()
    if not args.topology:
        raise NslabError("name a topology (or file) to export — see `nslab export --list`")
    params = parse_params(args.param)
    if args.format == "rendered":
        _, text, _ = render(args.topology, params)
    else:
        topo = load(args.topology, params, lab_name=args.name)
        shown = " ".join(f"-p {k}={v}" for k, v in topo.params.items() if v is not None)
        text = dump_containerlab(
            topo, header=f"exported by `nslab export` from {topo.source} {shown}".rstrip()
        )
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise NslabError(f"cannot write {args.output}: {exc.strerror}") from None
    else:
        sys.stdout.write(text)
    return 0


def _list() -> int:
    for name, path, description in list_topologies():
        print(f"{name:12} {description}")
        if template.is_template(path):
            header = template.read_header(path, path.read_text(encoding="utf-8"))
            for prm in header.params.values():
                hint = f"  {prm.help}" if prm.help else ""
                print(f"{'':12}   -p {prm.name}={'' if prm.default is None else prm.default}{hint}")
        print(f"{'':12}   ({path})")
    return 0
