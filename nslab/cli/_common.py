"""Helpers shared by CLI verbs."""

from __future__ import annotations

import argparse


def add_params(p: argparse.ArgumentParser) -> None:
    """The `-p KEY=VALUE` option of every verb that takes a topology
    (parsed with nslab.topo.parse_params)."""
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="template parameter, repeatable (e.g. -p k=4)",
    )
