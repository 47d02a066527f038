"""nslab release student [LAB...] -o DIR: the copy of the kit a course hands out."""

from __future__ import annotations

import argparse
from pathlib import Path

from nslab.labs import REPO_ROOT
from nslab.release import build_student_release

VERB = "release"
HELP = "build the student release: the kit without solutions, hidden checks or variants"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="release_kind", metavar="KIND")
    sub.required = True
    s = sub.add_parser(
        "student", help="the kit without labs/*/solution/ and labs/*/grader/ (and without .git)"
    )
    s.add_argument("labs", nargs="*", metavar="LAB", help="lab ids to include (default: every lab)")
    s.add_argument("-o", "--out", type=Path, required=True, help="new folder for the release")
    s.add_argument(
        "--repo", type=Path, default=REPO_ROOT, help="the instructor's checkout (default: this one)"
    )


def run(args: argparse.Namespace) -> int:
    labs = build_student_release(args.repo, args.out, args.labs or None)
    print(f"wrote the student release to {args.out} with {len(labs)} lab(s): {' '.join(labs)}")
    print("  left out: labs/*/solution/, labs/*/grader/, .git (see RELEASE in the release)")
    print(f"  try it:   cd {args.out} && sudo make test")
    return 0
