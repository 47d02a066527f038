"""Hostile lab 2 submissions (tests/data/grading/lab2/*), graded for real in
one batch next to the starter: forged result lines, guessed values, patched
grader and kit classes, a GET borrowed from the kit (or the checkout), and a
daemon that outlives the submission. Each scores at most what the starter
scores; none leaves a process behind."""

from __future__ import annotations

import ast

import grading_support
import pytest
from grading_support import DATA

from nslab.grading import sandbox
from nslab.grading.runner import grade_batch
from nslab.labs import find_lab, labs_root

pytestmark = [pytest.mark.root, pytest.mark.slow]
grading_env = grading_support.grading_env  # the shared fixture
LAB2 = labs_root() / "02-rdma-kv"
HOSTILE = ["forge", "guess", "patch", "kitimport", "outlive"]


def test_the_kit_ships_no_one_sided_get():
    """nslab/rdma/kv.py offers building blocks (READ, RPC, the table's layout),
    not the lab's answer: no client class there has a GET of its own except
    the TCP baseline, and nothing in it reads a bucket and then a slot."""
    import nslab.rdma.kv as kv

    tree = ast.parse(open(kv.__file__).read())
    gets = [
        f"{c.name}.{f.name}"
        for c in tree.body
        if isinstance(c, ast.ClassDef)
        for f in c.body
        if isinstance(f, ast.FunctionDef) and "get" in f.name.lower()
    ]
    assert set(gets) <= {"Table.get", "TcpClient.get"}, gets
    # Table.get runs in the server over its own buffer (no RDMA): not an answer.
    # The answer walks bucket_addr -> READ -> slot_addr -> READ; the kit only defines them.
    calls = [n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]  # fmt: skip
    assert "bucket_addr" not in calls and "slot_addr" not in calls, "kv.py walks the table with READs: that is the lab's answer"  # fmt: skip


@pytest.mark.skipif(not (LAB2 / "starter").is_dir(), reason="lab 2 has no starter/")
def test_lab2_hostile_submissions_gain_nothing(grading_env, tmp_path):
    subs = [LAB2 / "starter"] + [DATA / "lab2" / h for h in HOSTILE]
    rs = {r.name: r for r in grade_batch(find_lab("02-rdma-kv"), subs, tmp_path / "out", jobs=2, user_base=grading_env)}  # fmt: skip
    starter = rs["starter"]
    lost = [f"{t['name']}: {t['reason']}" for t in starter.tests if t["outcome"] != "passed"]
    assert starter.status == "ok" and 0 < starter.score < starter.max_score, lost
    for h in HOSTILE:
        r = rs[h]
        passed = [t["name"] for t in r.tests if t["outcome"] == "passed"]
        assert r.status == "ok", (h, r.output)
        assert r.score <= starter.score, f"{h} scored {r.score} > starter {starter.score}: {passed}; the starter lost: {lost}"  # fmt: skip
    # guessed values never pass the value checks, and earn nothing gated on them
    assert rs["guess"].score <= 1, [
        t["name"] for t in rs["guess"].tests if t["outcome"] == "passed"
    ]
    # nothing of any submission (the outliving daemon included) is still alive
    for user in (grading_env, f"{grading_env}1"):
        try:
            left = sandbox.pids_of_user(user)
        except KeyError:
            continue
        assert not left, f"processes of {user} outlived the grading: {left}"
