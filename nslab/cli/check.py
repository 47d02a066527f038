"""nslab check: the student's view: run a lab's public checks on a submission."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from nslab.errors import NslabError
from nslab.grading.runner import grade_one
from nslab.labs import find_lab

VERB = "check"
HELP = "run a lab's public checks on your submission (exit 0 iff all pass)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("lab", metavar="ID", help="lab id (see `nslab lab list`)")
    p.add_argument(
        "--submission", "-s", type=Path, default=Path("."), help="your folder (default: .)"
    )
    p.add_argument(
        "--out", "-o", type=Path, default=None, help="also keep results.json, report.html here"
    )


_MARK = {
    "passed": "PASS",
    "failed": "FAIL",
    "error": "ERROR",
    "timeout": "TIMEOUT",
    "skipped": "SKIP",
}


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NslabError(
            "checks bring up network namespaces and need root: run `sudo nslab check ...`"
        )
    spec = find_lab(args.lab)
    out = args.out or Path(tempfile.mkdtemp(prefix="nslab-check-"))
    print(f"{spec.title}: running public checks on {args.submission.resolve()} ...", flush=True)
    r = grade_one(spec, args.submission, out, visibility="public")
    for t in r.tests:
        mark = _MARK.get(t["outcome"], t["outcome"].upper())
        if t["outcome"] == "passed" and t["score"] < t["max_score"]:
            mark = "PART"
        print(f"  {mark:7} {t['name']}  ({t['score']:g}/{t['max_score']:g})")
        details = [t["reason"]] + t.get("notes", [])
        vals = t.get("values") or {}
        if vals:
            details.append(
                "observed: "
                + ", ".join(
                    f"{k}={v['value']}{' ' + v['unit'] if v['unit'] else ''}"
                    for k, v in vals.items()
                )
            )
        for d in details:
            for line in str(d).splitlines()[:12] if d else []:
                print(f"          {line}")
    if r.status != "ok":
        print(f"  {r.status}: {r.output}")
    print(f"score of public checks: {r.score:g}/{r.max_score:g} in {r.execution_time:.1f} s")
    if args.out is not None:
        print(f"report: {out / 'report.html'}")
    else:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if r.status == "ok" and r.all_passed else 1
