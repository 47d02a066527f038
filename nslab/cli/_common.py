"""Helpers shared by CLI verbs."""

from __future__ import annotations

import argparse

from nslab.errors import NslabError


def add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="template parameter (repeatable), e.g. -p k=4",
    )


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise NslabError(f"-p {item!r}: expected KEY=VALUE, e.g. -p k=4")
        params[key.strip()] = value.strip()
    return params


def lab_name_arg(args: argparse.Namespace) -> str | None:
    return getattr(args, "name", None) or getattr(args, "lab", None)
