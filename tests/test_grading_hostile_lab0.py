"""Hostile and broken lab 0 submissions (a real leaf-spine with OVS and the
student's os-ken app): a controller that dies at import breaks the lab and
scores 0 without stopping the batch; a working controller that snoops,
forges results and kills what it can gains nothing and loses nothing."""

from __future__ import annotations

import json
import os

import grading_support
import pytest
from grading_support import DATA

from nslab.grading.runner import grade_batch
from nslab.labs import find_lab, labs_root

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.needs_solution]
grading_env = grading_support.grading_env  # the shared fixture
LAB0 = labs_root() / "00-sdn-warmup"


@pytest.mark.skipif(not (LAB0 / "solution").is_dir(), reason="lab 0 has no solution/ yet")
def test_lab0_hostile_controllers(grading_env, tmp_path):
    crash = DATA / "lab0" / "crash"
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    code = (LAB0 / "solution" / "learning_switch.py").read_text()
    (hostile / "learning_switch.py").write_text(
        code + "\n\n" + (DATA / "lab0" / "hostile_tail.py").read_text()
    )
    out = tmp_path / "out"
    os.environ["NSLAB_GRADE_PREFIX"] = "tgrdz"
    try:
        rs = {
            r.name: r
            for r in grade_batch(
                find_lab("00-sdn-warmup"), [crash, hostile], out, jobs=2, user_base=grading_env
            )
        }
    finally:
        os.environ["NSLAB_GRADE_PREFIX"] = "tgrd"
    broken = rs["crash"]
    assert broken.status == "ok" and broken.score == 0 and broken.execution_time < 200
    assert all("did not come up" in t["reason"] for t in broken.tests), broken.tests[0]["reason"]
    good = rs["hostile"]
    failed = [f"{t['name']}: {t['reason']}" for t in good.tests if t["outcome"] != "passed"]
    assert good.score == good.max_score, failed
    log = (out / "hostile" / "logs" / "default" / "controller.log").read_text()
    assert "DENIED" in log and "/solution/" not in "".join(
        line for line in log.splitlines() if line.startswith("READ")
    )
    doc = json.loads((out / "hostile" / "results.json").read_text())
    assert doc["score"] == good.score != 999
