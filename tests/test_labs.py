"""Every lab's contract, proven by grading: the reference solution earns full
marks and the starter earns less (with `nslab grade`, hidden checks included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nslab.labs import labs_root, list_labs

LABS = [s for s in list_labs(labs_root())]


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.needs_solution  # skipped in a student release (conftest.py); here a missing solution fails
@pytest.mark.parametrize("spec", LABS, ids=[s.id for s in LABS])
def test_solution_full_marks_starter_less(spec, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("grading needs root")
    for part in ("solution", "starter", "checks"):
        # The contract: a lab cannot land without all three (p4lang/tutorials' rule).
        assert (spec.path / part).is_dir(), f"{spec.id} has no {part}/"
    out = tmp_path / "out"
    env = dict(os.environ, NSLAB_GRADE_PREFIX="tgrd", NSLAB_STUDENT_USER="tgrdlab")
    cmd = [
        sys.executable,
        "-m",
        "nslab",
        "grade",
        spec.id,
        str(spec.path / "solution"),
        str(spec.path / "starter"),
    ]
    cmd += ["--out", str(out), "--jobs", "2"]
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=2 * spec.time_budget + 120
        )
        assert res.returncode == 0, res.stderr[-2000:]
        sol = json.loads((out / "solution" / "results.json").read_text())
        sta = json.loads((out / "starter" / "results.json").read_text())
        failed = [f"{t['name']}: {t['output']}" for t in sol["tests"] if t["status"] != "passed"]
        assert sol["score"] == sol["max_score"] > 0, "solution lost points:\n" + "\n".join(failed)
        assert sta["score"] < sta["max_score"], "the starter already earns full marks"
    finally:
        from nslab.grading import sandbox

        for user in ("tgrdlab", "tgrdlab1"):
            sandbox.remove_user(user)
