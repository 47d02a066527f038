"""Hostile submissions against the grader, on the synthetic 'squares' lab
(tests/data/grading/labs/echo, no network needed). Each must finish quickly
with a sane score, gain nothing, and the batch must go on."""

from __future__ import annotations

import csv
import json
import os
import shutil

import grading_support
import pytest
from grading_support import ECHO, SUBS, leftovers

from nslab.grading import sandbox
from nslab.grading.runner import grade_batch
from nslab.labs import load_lab

pytestmark = [pytest.mark.root, pytest.mark.slow]
HOSTILE = [
    "fake_results",
    "sleep_forever",
    "hang",
    "fork_bomb",
    "snoop",
    "killer",
    "fill_disk",
    "liar",
]
grading_env = grading_support.grading_env  # the shared fixture
PREFIX = "tgrdh"
SECRETS = ("SECRET_SOLUTION_TOKEN_7f3a", "SECRET_CHECK_TOKEN_91c2")


@pytest.fixture(scope="module")
def batch(grading_env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tgrd-hostile")
    out = tmp / "out"
    subs = []
    for name in ["solution", "starter"]:
        shutil.copytree(ECHO / name, tmp / "subs" / name)
        subs.append(tmp / "subs" / name)
    for name in HOSTILE:
        dst = tmp / "subs" / name
        shutil.copytree(SUBS / name, dst)
        # what a snooping submission would aim at: the lab's secrets and the results
        targets = [ECHO / "solution" / "app.py", ECHO / "checks" / "test_squares.py", out / name]
        (dst / "targets.txt").write_text("\n".join(str(t) for t in targets) + "\n")
        subs.append(dst)
    os.environ["NSLAB_GRADE_PREFIX"] = PREFIX  # its own prefix: leftovers are this batch's only
    try:
        results = grade_batch(load_lab(ECHO), subs, out, jobs=2, user_base=grading_env)
    finally:
        os.environ["NSLAB_GRADE_PREFIX"] = "tgrd"
    return {r.name: r for r in results}, out


def test_every_submission_is_reported(batch):
    results, out = batch
    assert set(results) == {"solution", "starter", *HOSTILE}
    rows = {r["submission"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert set(rows) == set(results)
    for name, r in results.items():
        doc = json.loads((out / name / "results.json").read_text())
        assert doc["score"] == r.score and doc["max_score"] == 11, name
        assert 0 <= r.score <= r.max_score, name
        assert r.execution_time < 40, (name, r.execution_time)
    assert results["solution"].score == 11 and results["starter"].score == 3


def test_nothing_is_left_behind(batch, grading_env):
    assert leftovers(PREFIX) == []
    for user in (grading_env, grading_env + "1"):
        assert sandbox.pids_of_user(user) == [], user


def test_forged_results_change_nothing(batch):
    results, out = batch
    r = results["fake_results"]
    assert r.score == results["starter"].score  # it earns what its behaviour earns
    log = (out / "fake_results" / "logs" / "default" / "app.log").read_text()
    assert f"could not write {out / 'fake_results'}/results.json" in log
    assert json.loads((out / "fake_results" / "results.json").read_text())["score"] == r.score


def test_a_service_that_never_starts_fails_fast(batch):
    r = batch[0]["sleep_forever"]
    assert r.score == 0 and r.status == "ok"
    assert all("was not ready after 4 s" in t["reason"] for t in r.tests)


def test_a_hung_service_times_out_and_never_passes(batch):
    r = batch[0]["hang"]
    by = {t["nodeid"].split("::")[-1]: t for t in r.tests}
    assert by["test_big_number"]["outcome"] == "timeout"
    assert by["test_big_number"]["reason"] == "timed out after 2 s"
    assert by["test_many"]["reason"] == "timed out after 4 s"
    assert all(t["score"] == 0 for t in r.tests if t["outcome"] == "timeout")
    assert r.score == 1  # only the latency check: it does accept connections


def test_a_fork_bomb_is_contained(batch):
    r = batch[0]["fork_bomb"]
    assert r.score == 0 and r.execution_time < 30


def test_secrets_stay_secret(batch):
    results, out = batch
    log = (out / "snoop" / "logs" / "default" / "app.log").read_text()
    # It tried, and found nothing: the sandbox's file-system view has no checkout.
    assert "No such file or directory" in log and "Permission denied" not in log
    for path in (out / "snoop").rglob("*"):
        if (
            path.is_file() and path.name != "grader.log"
        ):  # grader.log is the TA's, with the checks' tracebacks
            text = path.read_text(errors="replace")
            for token in SECRETS:
                assert token not in text, f"{token} leaked into {path}"
    assert results["snoop"].score <= 1


def test_killing_everything_only_hurts_itself(batch):
    r = batch[0]["killer"]
    assert r.status == "ok" and r.score == 11


def test_filling_the_disk_is_bounded(batch):
    results, out = batch
    log = (out / "fill_disk" / "logs" / "default" / "app.log").read_text()
    assert "File too large" in log  # RLIMIT_FSIZE (1 MB in lab.yaml)
    assert "No space left on device" in log  # the work dir's own tmpfs (8 MB)
    assert results["fill_disk"].status == "ok"


def test_claiming_success_earns_nothing(batch):
    r = batch[0]["liar"]
    passed = [t["nodeid"].split("::")[-1] for t in r.tests if t["outcome"] == "passed"]
    assert passed == ["test_latency"] and r.score == 1


def test_same_submission_same_score(grading_env, tmp_path):
    subs = [ECHO / "starter", ECHO / "starter", ECHO / "starter"]
    rs = grade_batch(load_lab(ECHO), subs, tmp_path / "out", jobs=1, user_base=grading_env)
    assert [r.name for r in rs] == ["starter", "starter-2", "starter-3"]
    assert len({tuple(t["score"] for t in r.tests) for r in rs}) == 1
