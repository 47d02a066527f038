"""Hostile and broken lab 06 submissions, graded for real (topology, BPF,
sandboxed compiler): a filter that passes everything, a balancer the
verifier rejects, C that #includes /etc/shadow or a grader file or
.incbin's a checks file at compile time, and a submission with its own
conftest.py whose NF forges its ready line and forks a flooder that
tries to outlive grading. Each scores at most what the starter scores; no secret
reaches the feedback. (The solution's full marks: tests/test_labs.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import grading_support
import pytest
from grading_support import DATA

from nslab.grading import sandbox
from nslab.grading.runner import grade_batch
from nslab.labs import find_lab, labs_root

pytestmark = [pytest.mark.root, pytest.mark.slow]
grading_env = grading_support.grading_env  # the shared fixture
LAB = labs_root() / "06-kernel-bypass"
HOSTILE = DATA.parent / "lab06"  # not under grading/: no conftest.py is collected here


def _sub(root, name: str, files: dict[str, str]) -> object:
    d = root / name
    shutil.copytree(LAB / "starter", d)
    for fname, text in files.items():
        (d / fname).write_text(text)
    return d


@pytest.fixture(scope="module")
def graded(grading_env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xdp-hostile")
    grader_file = LAB / "grader" / "reference.py"
    checks_file = LAB / "checks" / "test_filter.py"
    subs = [
        _sub(tmp, "starter", {}),
        _sub(
            tmp,
            "pass_and_reject",
            {
                "xdp_filter.c": (HOSTILE / "pass_all.c").read_text(),
                "xdp_lb.c": (HOSTILE / "verifier_reject.c").read_text(),
            },
        ),
        _sub(
            tmp,
            "leaky",
            {
                "xdp_filter.c": (HOSTILE / "include_shadow.c").read_text(),
                "xdp_lb.c": f'#include "{grader_file}"\nasm(".incbin \\"{checks_file}\\"");\n',
            },
        ),
        _sub(
            tmp,
            "conftest",
            {
                "conftest.py": (HOSTILE / "hostile_conftest.py").read_text(),
                "nf_afxdp.py": (HOSTILE / "hostile_nf.py").read_text(),
            },
        ),
    ]
    out = tmp / "out"
    mounts_before = _bpf_mounts()
    os.environ["NSLAB_GRADE_PREFIX"] = "tgrdx"
    try:
        rs = grade_batch(
            find_lab("06-kernel-bypass"),
            subs,
            out,
            jobs=2,
            visibility="public",
            user_base=grading_env,
        )
    finally:
        os.environ["NSLAB_GRADE_PREFIX"] = "tgrd"
    # every private bpffs of the grader's loader is unmounted again, and no
    # student process (the flooding child of the hostile NF) outlived grading
    assert _bpf_mounts() <= mounts_before
    for user in (grading_env, grading_env + "1"):
        with contextlib.suppress(KeyError):  # a slot that was never used has no user
            assert sandbox.pids_of_user(user) == [], f"processes of {user} outlived grading"
    return {r.name: r for r in rs}, out


def _bpf_mounts() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {ln.split()[4] for ln in f if "/nslab-bpf-" in ln.split()[4]}


def _reasons(r) -> str:
    return "\n".join(t["reason"] for t in r.tests)


def test_hostile_scores_at_most_the_starter(graded):
    rs, _ = graded
    base = rs["starter"]
    assert base.status == "ok" and 0 < base.score < base.max_score
    for name in ("pass_and_reject", "leaky", "conftest"):
        r = rs[name]
        assert r.status in ("ok", "error"), (name, r.status, r.output)
        assert r.score <= base.score, f"{name} scored {r.score} > starter {base.score}"


def test_verifier_rejection_reaches_the_student(graded):
    rs, _ = graded
    text = _reasons(rs["pass_and_reject"])
    assert "the verifier rejected program 'xdp_lb'" in text
    assert "xdp_lb.c:11" in text and "outside of the packet" in text, text[:1500]


def test_no_secret_in_the_feedback(graded):
    rs, out = graded
    r = rs["leaky"]
    text = _reasons(r)
    assert "does not compile" in text
    feedback = (out / "leaky" / "results.json").read_text()
    with open("/etc/shadow") as f:
        shadow_line = f.readline().strip()
    for secret in (shadow_line, "def filter_expect", "def test_filter_counters"):
        assert secret not in feedback


def test_submitted_conftest_changes_nothing(graded):
    rs, out = graded
    doc = json.loads((out / "conftest" / "results.json").read_text())
    assert doc["score"] == rs["conftest"].score <= rs["starter"].score
    assert doc["score"] != 999
