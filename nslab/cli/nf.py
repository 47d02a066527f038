"""`nslab nf`: the NF toolkit from the command line: list elements and
templates, run a configuration, render an nftables template, apply it to
containers with Ansible."""

from __future__ import annotations

import argparse
import json
import sys

from nslab.errors import NslabError

VERB = "nf"
HELP = "NF toolkit: run a Click-like NF configuration, render or apply nftables NF templates"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="nf_cmd", metavar="COMMAND")
    sub.required = True
    sub.add_parser("elements", help="list the toolkit's elements with their first doc line")
    sub.add_parser("templates", help="list the nftables NF templates")
    r = sub.add_parser("run", help="run an NF configuration file in this namespace (needs root)")
    r.add_argument("config", help="configuration file (docs/nf-toolkit.md)")
    r.add_argument("params", nargs="*", metavar="NAME=VALUE", help="values for $NAME")
    r.add_argument("--name", help="NF name (default: the file's stem)")
    r.add_argument("--report", help="report path (default: <name>.report)")
    r.add_argument("--duration", type=float, help="stop after this many seconds")
    for name, text in (
        ("render", "print a template rendered with parameters"),
        ("apply", "apply a template to Docker containers with Ansible"),
    ):
        p = sub.add_parser(name, help=text)
        if name == "apply":
            p.add_argument("containers", help="container name(s), comma-separated")
        p.add_argument("template", help="template name (see `nslab nf templates`)")
        p.add_argument(
            "params",
            nargs="*",
            metavar="NAME=VALUE",
            help="parameters; VALUE is JSON when it parses (e.g. backends='[\"10.0.0.2\"]'), else a string",
        )


def _params(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise NslabError(f"parameter {p!r}: expected NAME=VALUE")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def run(args: argparse.Namespace) -> int:
    if args.nf_cmd == "elements":
        from nslab.nf import ELEMENTS

        for name, cls in sorted(ELEMENTS.items()):
            doc = (cls.__doc__ or "").strip().splitlines()[0]
            print(f"{name:<18} {doc}")
        return 0
    if args.nf_cmd == "templates":
        from nslab.nf.kernel import TEMPLATES, templates

        for t in templates():
            print(f"{t:<10} {TEMPLATES / (t + '.nft.j2')}")
        return 0
    if args.nf_cmd == "render":
        from nslab.nf import render

        sys.stdout.write(render(args.template, **_params(args.params)))
        return 0
    if args.nf_cmd == "apply":
        from nslab.nf import apply

        res = apply(args.containers.split(","), args.template, _params(args.params))
        print(
            f"applied {args.template} to {args.containers}: {res['status']}, changed {res['changed']}"
        )
        return 0
    from pathlib import Path

    from nslab.nf.config import load
    from nslab.nf.router import main_for

    bad = [p for p in args.params if "=" not in p]
    if bad:
        raise NslabError(f"parameter {bad[0]!r}: expected NAME=VALUE")
    params = dict(p.split("=", 1) for p in args.params)
    router = load(args.config, params, name=args.name)
    router.report_path = Path(args.report or f"{router.name}.report")
    return main_for(router, args.duration)
