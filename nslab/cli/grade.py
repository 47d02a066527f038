"""nslab grade: grade submissions with all checks (hidden ones included)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nslab.errors import NslabError
from nslab.grading.runner import SubmissionResult, grade_batch
from nslab.labs import find_lab

VERB = "grade"
HELP = (
    "grade submissions of a lab (all checks, hidden ones too): results.json, junit.xml, report.html"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "lab", metavar="ID", help="lab id (folder name under labs/) or path to a lab folder"
    )
    p.add_argument(
        "submissions",
        metavar="SUBMISSION",
        nargs="+",
        type=Path,
        help="submission folders or .zip files (files nested in one subfolder are found)",
    )
    p.add_argument(
        "--out",
        "-o",
        type=Path,
        required=True,
        help="results folder (one subfolder per submission)",
    )
    p.add_argument(
        "--jobs", "-j", type=int, default=1, help="submissions graded at once (default 1)"
    )
    p.add_argument(
        "--user",
        default=None,
        help="base name of the sandbox users (default nslab-student; slot i adds i)",
    )


# Above this share of wall time with tasks waiting for a CPU, a grading's
# timing checks may have judged the machine rather than the submission.
CONTENDED_PCT = 50.0


def _progress(r: SubmissionResult, i: int, n: int) -> None:
    extra = (
        ""
        if r.status == "ok"
        else f"  [{r.status}: {r.output.splitlines()[0] if r.output else ''}]"
    )
    psi = r.cpu_contention_pct
    cpu = "" if psi is None else f", CPU contention {psi:g} %"
    print(
        f"[{i}/{n}] {r.name}: {r.score:g}/{r.max_score:g} in {r.execution_time:.1f} s{cpu}{extra}",
        file=sys.stderr,
    )
    if psi is not None and psi > CONTENDED_PCT:
        print(
            f"  warning: tasks waited for a CPU {psi:g} % of the time; timing checks may have "
            f"judged the machine, not {r.name}: regrade it when the machine is quieter "
            "(or with fewer --jobs)",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NslabError("grading needs root (network namespaces, sandbox users): run it with sudo")
    spec = find_lab(args.lab)
    if args.out.resolve() in [s.resolve() for s in args.submissions]:
        raise NslabError("--out must not be one of the submission folders")
    results = grade_batch(
        spec, args.submissions, args.out, jobs=args.jobs, user_base=args.user, progress=_progress
    )
    bad = [r for r in results if r.status != "ok"]
    print(
        f"graded {len(results)} submission(s) into {args.out}; summary: {args.out / 'summary.csv'}"
    )
    print(
        f"scores to upload: {args.out / 'gradescope-scores.csv'} (Gradescope), "
        f"{args.out / 'canvas-scores.csv'} (Canvas)"
    )
    if bad:
        print(
            f"{len(bad)} did not grade cleanly: {', '.join(f'{r.name} ({r.status})' for r in bad)}"
        )
    # grading ran: the exit status is 0 even when submissions failed checks
    return 0
