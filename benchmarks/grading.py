#!/usr/bin/env python3
"""Grading time per submission and score stability: grade the same
submissions N times and report the time each took and every distinct score.

    sudo .venv/bin/python benchmarks/grading.py                       # synthetic lab, 10x
    sudo .venv/bin/python benchmarks/grading.py --lab 00-sdn-warmup --repeat 10 --jobs 2
    sudo .venv/bin/python benchmarks/grading.py --lab labs/00-sdn-warmup \\
        --submissions labs/00-sdn-warmup/solution labs/00-sdn-warmup/starter

Default: the synthetic 'squares' lab of the grader's tests (no network), its
solution and starter. Each repeat is one `grade_batch` of all submissions.
The last line says stable=yes when every submission got the same score and
per-check scores in every repeat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nslab.grading.runner import grade_batch
from nslab.labs import find_lab

ROOT = Path(__file__).resolve().parent.parent
ECHO = ROOT / "tests" / "data" / "grading" / "labs" / "echo"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--lab", default=str(ECHO), help="lab id or folder (default: the synthetic test lab)"
    )
    ap.add_argument(
        "--submissions", nargs="*", type=Path, help="default: the lab's solution/ and starter/"
    )
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=1)
    a = ap.parse_args(argv)
    spec = find_lab(a.lab)
    subs = a.submissions or [spec.path / "solution", spec.path / "starter"]
    times: dict[str, list[float]] = {}
    scores: dict[str, set[tuple]] = {}
    totals: dict[str, set[float]] = {}
    walls = []
    for i in range(a.repeat):
        with tempfile.TemporaryDirectory(prefix="nslab-bench-grade-") as out:
            t0 = time.monotonic()
            results = grade_batch(spec, subs, Path(out), jobs=a.jobs)
            walls.append(time.monotonic() - t0)
        for r in results:
            times.setdefault(r.name, []).append(r.execution_time)
            scores.setdefault(r.name, set()).add(tuple((t["nodeid"], t["score"]) for t in r.tests))
            totals.setdefault(r.name, set()).add(r.score)
        line = ", ".join(
            f"{r.name} {r.score:g}/{r.max_score:g} {r.execution_time:.1f}s" for r in results
        )
        print(f"[{i + 1}/{a.repeat}] {line}", file=sys.stderr, flush=True)
    print(f"lab {spec.id}: {a.repeat} repeats, jobs={a.jobs}")
    print(f"{'submission':<20} {'median s':>9} {'min s':>7} {'max s':>7}  scores")
    for name, ts in times.items():
        sc = ", ".join(f"{s:g}" for s in sorted(totals[name]))
        print(f"{name:<20} {statistics.median(ts):>9.1f} {min(ts):>7.1f} {max(ts):>7.1f}  {sc}")
    stable = all(len(s) == 1 for s in scores.values())
    per_sub = statistics.median(walls) / len(subs) * a.jobs
    print(
        f"median batch wall time {statistics.median(walls):.1f} s for {len(subs)} submissions; "
        f"{per_sub:.1f} s per submission per job slot; stable={'yes' if stable else 'no'}"
    )
    return 0 if stable else 1


if __name__ == "__main__":
    sys.exit(main())
