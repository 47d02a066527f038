"""Hostile submissions of labs 3 and 4, graded with the real runner: each
patches the grader's classes at import, imports the kit's answer, prints
forged probe lines, pre-writes a forged curve, forks a child that outlives
the submission and floods the pods, answers past the deadline or with
garbage. None scores more than the starter (the points of the checks the
starter passes), the baselines are undisturbed, and nothing outlives the
grading."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid

import pytest
from grading_support import DATA, graded_as, survivors

from nslab.grading.runner import grade_batch
from nslab.labs import find_lab, labs_root

pytestmark = [pytest.mark.root, pytest.mark.slow]
SERVING = DATA / "serving"
PREFIX = "tsrvh"  # host paths and instance names of these gradings
USER = "tsrvhu"  # their sandbox users: tsrvhu, tsrvhu1 (removed after)


@pytest.fixture(scope="module")
def grading_env():
    if os.geteuid() != 0:
        pytest.skip("grading needs root (sandbox users)")
    with graded_as(PREFIX, USER) as user:
        yield user


# The starter's score: lab 3's starter passes only "answers correctly" (2);
# lab 4's "answers" (1) and "survives a pod failure" (2). test_labs.py grades them.
STARTER = {"03-batching": 2, "04-load-balancing": 3}


def hostile(tmp_path, lab: str, name: str, base: str, files: dict[str, str]):
    """A submission: `base` (starter/solution) files, the hostile tail appended
    to the policy file, and the flooding helper; returns (path, marker)."""
    sub = tmp_path / name
    shutil.copytree(labs_root() / lab / base, sub)
    mark = f"tsrvmark{uuid.uuid4().hex[:10]}"
    tail = (SERVING / "hostile_tail.py").read_text()
    tail = tail.replace("@@MARK@@", mark)
    for fname, how in files.items():
        if how == "tail":
            (sub / fname).write_text((sub / fname).read_text() + "\n\n" + tail)
        elif how.startswith("from:"):
            shutil.copy(labs_root() / lab / how[5:] / fname, sub / fname)
        else:
            (sub / fname).write_text(how)
    shutil.copy(SERVING / "flood_helper.py", sub / "flood_helper.py")
    (sub / "curve.csv").unlink(missing_ok=True)
    return sub, mark


def grade(lab: str, subs: list, out, user: str) -> dict:
    rs = grade_batch(find_lab(lab), subs, out, jobs=2, user_base=user)
    return {r.name: r for r in rs}


def observed(r, test_start: str) -> str:
    return next(t["reason"] for t in r.tests if t["name"].startswith(test_start))


def output(out, name: str, test_start: str) -> str:
    """What a check recorded (results.json: its reason, then the observed values)."""
    doc = json.loads((out / name / "results.json").read_text())
    return next(t["output"] for t in doc["tests"] if t["name"].startswith(test_start))


def test_lab3_hostile_policy_gains_nothing(grading_env, tmp_path):
    """Starter policy + patches, forgeries, a flooding child and late answers,
    with the solution's pod.yaml (batches of 32, which a greedy fallback would
    reward)."""
    lab = "03-batching"
    sub, mark = hostile(
        tmp_path,
        lab,
        "h3",
        "starter",
        {"batching_policy.py": "tail", "pod.yaml": "from:solution"},
    )
    rs = grade(lab, [sub], tmp_path / "out", grading_env)
    r = rs["h3"]
    assert r.status == "ok", r
    assert r.score <= STARTER[lab], [(t["name"], t["outcome"], t["reason"]) for t in r.tests]
    assert "did not answer in time" in observed(r, "the pod runs"), r.tests
    assert "no valid answer" in observed(r, "your batching policy"), r.tests
    # The forged curve is checked against the grader's own measurement of the
    # same pod, taken after the student's processes were killed: undisturbed.
    curve = output(tmp_path / "out", "h3", "curve.csv")
    assert "yours / grader's" in curve, curve
    grader_p50 = [float(g) for g in re.findall(r"yours / grader's = [\d.]+ / ([\d.]+) ms", curve)]
    assert grader_p50 and max(grader_p50) < 60, curve
    assert not survivors([mark]), survivors([mark])


def test_lab4_importing_the_kit_and_hostile_policies_gain_nothing(grading_env, tmp_path):
    lab = "04-load-balancing"
    kit, m1 = hostile(
        tmp_path,
        lab,
        "kit",
        "starter",
        {"policies.py": "from nslab.serving.policies import PowerOfTwo, JoinShortestQueue\n"},
    )
    bad, m2 = hostile(tmp_path, lab, "bad", "starter", {"policies.py": "tail"})
    rs = grade(lab, [kit, bad], tmp_path / "out", grading_env)
    for name in ("kit", "bad"):
        r = rs[name]
        assert r.status == "ok", r
        assert r.score <= STARTER[lab], [(t["name"], t["outcome"], t["reason"]) for t in r.tests]
    assert "ImportError" in json.dumps(rs["kit"].tests), rs["kit"].tests
    reason = observed(rs["bad"], "requests through your policies")
    assert "in time or validly" in reason, reason
    assert not survivors([m1, m2]), survivors([m1, m2])


STALL_ONCE = """

import os as _os
import time as _time

_first_choose = JoinShortestQueue.choose
_calls = [0]


def _stalling_choose(self, request, pods):
    # The first policy process stalls for 0.6 s after 100 decisions, as a
    # process descheduled by a busy machine would; later ones do not.
    _calls[0] += 1
    if _calls[0] == 100 and not _os.path.exists("stalled-once"):
        open("stalled-once", "w").close()
        _time.sleep(0.6)
    return _first_choose(self, request, pods)


JoinShortestQueue.choose = _stalling_choose
"""


def test_lab4_a_policy_stalled_once_is_measured_again(grading_env, tmp_path):
    """Answers late only in the first run (a stall, like a descheduled process):
    the grader measures again, and the solution keeps full marks, with a note.
    (Found grading lab 4's solution on a loaded machine: one run in five lost 7
    points to a stall of the policy's process.)"""
    lab = "04-load-balancing"
    sub = tmp_path / "stall1"
    shutil.copytree(labs_root() / lab / "solution", sub)
    (sub / "policies.py").write_text((sub / "policies.py").read_text() + STALL_ONCE)
    r = grade(lab, [sub], tmp_path / "out", grading_env)["stall1"]
    assert r.status == "ok", r
    assert r.score == r.max_score, [(t["name"], t["outcome"], t["reason"]) for t in r.tests]
    out = output(tmp_path / "out", "stall1", "requests through your policies")
    assert "JoinShortestQueue: measured 2 times" in out, out
