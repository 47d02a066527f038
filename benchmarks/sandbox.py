#!/usr/bin/env python3
"""What the student sandbox costs a submission: the time from "start this
student program" to the program running, and from "stop the submission" to
its processes being gone, before (a dedicated user and rlimits, set in a
preexec function; processes swept by uid) and after (nslab's wrapper: the
lab's cgroup, a bubblewrap view, setpriv; processes killed by cgroup.kill).
The two sides are interleaved, round after round, so that load changes hit
both alike.

    sudo .venv/bin/python benchmarks/sandbox.py --rounds 30

A submission starts 1 (labs 0, 3, 4) to 4 (lab 1: three NFs and a probe)
student programs; the last line gives the added cost per program start and
per submission of 4 starts, with a 95 % interval of the median difference.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

from nslab import cgroup
from nslab.grading import sandbox

PROBE = "import nslab"  # a student program's first act: import the kit


def _before(user: str, wd: str) -> float:
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", PROBE],
        preexec_fn=sandbox.demote(user, sandbox.Limits(), cwd=wd),
        env=sandbox.student_env(wd),
        check=True,
    )
    dt = time.perf_counter() - t
    t = time.perf_counter()
    sandbox.kill_user_processes(user)
    return dt + (time.perf_counter() - t)


def _after(user: str, wd: str, lab: str) -> float:
    argv = sandbox.wrapper_argv(
        user=user, limits=sandbox.Limits(), cwd=wd, cgroup=f"{lab}/student/bench"
    )
    t = time.perf_counter()
    subprocess.run([*argv, sys.executable, "-c", PROBE], env=sandbox.student_env(wd), check=True)
    dt = time.perf_counter() - t
    t = time.perf_counter()
    cgroup.kill(lab)
    return dt + (time.perf_counter() - t)


def _ci_of_median_diff(a: list[float], b: list[float], n: int = 2000) -> tuple[float, float]:
    """95 % bootstrap interval of median(b) - median(a)."""
    rng = random.Random(1)
    diffs = sorted(
        statistics.median(rng.choices(b, k=len(b))) - statistics.median(rng.choices(a, k=len(a)))
        for _ in range(n)
    )
    return diffs[int(0.025 * n)], diffs[int(0.975 * n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--starts-per-submission", type=int, default=4)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (sandbox users, cgroups)", file=sys.stderr)
        return 1
    user = "nslab-bench"
    sandbox.ensure_user(user)
    wd = sandbox.make_workdir("/tmp", "nslab-bench-", user, sandbox.Limits(), None)
    lab = f"bsbx{os.getpid() % 10000}"
    before: list[float] = []
    after: list[float] = []
    try:
        _before(user, str(wd)), _after(user, str(wd), lab)  # warm caches
        for _ in range(a.rounds):
            before.append(_before(user, str(wd)))
            after.append(_after(user, str(wd), lab))
    finally:
        cgroup.kill(lab)
        sandbox.remove_workdir(wd)
        sandbox.remove_user(user)
    mb, ma = statistics.median(before), statistics.median(after)
    lo, hi = _ci_of_median_diff(before, after)
    print(f"before (user + rlimits, uid sweep): median {mb * 1e3:.1f} ms per start+stop")
    print(f"after (cgroup + bubblewrap + setpriv, cgroup.kill): median {ma * 1e3:.1f} ms")
    k = a.starts_per_submission
    print(
        f"sandbox_cost_ms={(ma - mb) * 1e3:.1f} ci95_ms=[{lo * 1e3:.1f},{hi * 1e3:.1f}] "
        f"per_submission_s={(ma - mb) * k:.3f} (x{k} starts) rounds={a.rounds}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
