"""nslab autograder bundle LAB -o LAB.zip: the zip to upload to Gradescope."""

from __future__ import annotations

import argparse
from pathlib import Path

from nslab.grading.bundle import MODES, build_bundle
from nslab.labs import REPO_ROOT

VERB = "autograder"
HELP = "build a lab's Gradescope autograder zip (setup.sh, run_autograder, the kit)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="autograder_cmd", metavar="COMMAND")
    sub.required = True
    b = sub.add_parser("bundle", help="write the autograder zip of one lab")
    b.add_argument("lab", metavar="LAB", help="lab id (see `nslab lab list`)")
    b.add_argument("-o", "--out", type=Path, required=True, help="the zip to write")
    b.add_argument(
        "--mode",
        choices=MODES,
        default="grade",
        help="grade: the runner grades (root, NET_ADMIN; default); "
        "precomputed: hosted Gradescope, copy results graded on a VM",
    )
    b.add_argument(
        "--precomputed",
        type=Path,
        default=None,
        metavar="DIR",
        help="results graded on a VM, <key>.json (autograder/grade-batch writes them)",
    )
    b.add_argument(
        "--repo", type=Path, default=REPO_ROOT, help="the instructor's checkout (default: this one)"
    )


def run(args: argparse.Namespace) -> int:
    out = build_bundle(args.repo, args.lab, args.out, args.precomputed, args.mode)
    size = out.stat().st_size / 1e6
    print(
        f"wrote {out} ({size:.1f} MB, mode {args.mode}): upload it as the assignment's autograder"
    )
    return 0
