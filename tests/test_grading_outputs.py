"""What graders and students get: the nslab check / nslab grade verbs,
results.json (Gradescope), junit.xml, report.html, summary.csv, and how a
run that crashes or overruns its budget is reported."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import grading_support
import pytest
from grading_support import DATA, ECHO, make_lab

from nslab import host
from nslab.cli.lab import STATE_DIR
from nslab.grading import runner
from nslab.labs import load_lab

pytestmark = pytest.mark.root
grading_env = grading_support.grading_env  # the shared fixture


def nslab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NSLAB_LABS=str(DATA / "labs"))
    return subprocess.run(
        [sys.executable, "-m", "nslab", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_check_shows_public_checks_only_with_reasons(grading_env):
    res = nslab("check", "echo", "--submission", str(ECHO / "starter"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL    answers 7 with 49  (0/3)" in res.stdout
    assert "reply to 7: expected 49, observed 14" in res.stdout
    assert (
        "PART" not in res.stdout
        and "PASS    out.txt lists the squares of 1..10  (2/2)" in res.stdout
    )
    assert (
        "big number" not in res.stdout and "connects fast" not in res.stdout
    )  # hidden / after due date
    assert "score of public checks: 2/7" in res.stdout
    ok = nslab("check", "echo", "--submission", str(ECHO / "solution"))
    assert ok.returncode == 0 and "score of public checks: 7/7" in ok.stdout


def test_grade_writes_every_output(grading_env, tmp_path):
    sub = tmp_path / "solution"  # same basename as the lab's solution: names must be made unique
    sub.mkdir()
    (sub / "app.py").write_text((ECHO / "solution" / "app.py").read_text())
    out = tmp_path / "out"
    res = nslab(
        "grade",
        "echo",
        str(ECHO / "solution"),
        str(sub),
        str(tmp_path / "missing"),
        "--out",
        str(out),
        "-j",
        "2",
    )
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "canvas-scores.csv",
        "gradescope-scores.csv",
        "missing",
        "solution",
        "solution-2",
        "summary.csv",
    ]
    doc = json.loads((out / "solution" / "results.json").read_text())
    assert doc["score"] == doc["max_score"] == 11 and doc["execution_time"] > 0
    assert {t["visibility"] for t in doc["tests"]} == {"visible", "hidden", "after_due_date"}
    for t in doc["tests"]:
        assert set(t) == {"name", "score", "max_score", "output", "visibility", "status"}
        assert t["status"] == "passed"
    suite = ET.parse(out / "solution" / "junit.xml").getroot()
    assert suite.get("tests") == "5" and suite.get("failures") == "0"
    report = (out / "solution" / "report.html").read_text()
    assert "<svg" in report and "TCP connect latency" in report and "11 / 11" in report
    for external in ('src="http', "href='http", 'href="http', "<link", "<script"):
        assert external not in report  # self-contained: nothing loaded from elsewhere
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["submission"], r["status"], r["score"]) for r in rows] == [
        ("solution", "ok", "11"),
        ("solution-2", "ok", "11"),
        ("missing", "error", "0"),
    ]
    assert "not a folder" in rows[2]["message"]
    # How contended the CPU was while each one was graded (PSI), for the TA to
    # judge timing checks by: in results.json, summary.csv and the progress line.
    if host.cpu_pressure_us() is not None:
        assert 0 <= doc["extra_data"]["cpu_contention_pct"] <= 100, doc["extra_data"]
        assert 0 <= float(rows[0]["cpu_contention_pct"]) <= 100, rows[0]
        assert "CPU contention" in res.stderr, res.stderr


def test_a_crashing_check_process_is_reported_and_the_batch_goes_on(grading_env, tmp_path):
    lab = make_lab(
        tmp_path,
        "crash",
        """
        title: Crash
        name: cr
        time_budget: 20
        """,
        {
            "test_a.py": """
            import os
            def test_first():
                pass
            def test_second():
                os._exit(3)  # the whole check process dies
            def test_third():
                pass
            """
        },
    )
    subs = [tmp_path / "s1", tmp_path / "s2"]
    for s in subs:
        s.mkdir()
    rs = runner.grade_batch(load_lab(lab), subs, tmp_path / "out", jobs=1, user_base=grading_env)
    assert [r.status for r in rs] == ["crashed", "crashed"]
    first = rs[0].tests
    assert [t["outcome"] for t in first] == ["passed", "error", "error"]
    assert first[1]["reason"] == "not run: the check process exited with code 3"
    assert rs[0].score == 1 and rs[0].max_score == 3


def test_time_budget_soft_and_hard(grading_env, tmp_path, monkeypatch):
    lab = make_lab(
        tmp_path,
        "slow",
        """
        title: Slow
        name: sl
        time_budget: 1
        check_timeout: 30
        """,
        {
            "test_a.py": """
            import time
            def test_slow():
                time.sleep(1.5)
            def test_after():
                pass
            """
        },
    )
    sub = tmp_path / "s"
    sub.mkdir()
    r = runner.grade_one(load_lab(lab), sub, tmp_path / "o1", user_base=grading_env)
    assert [t["outcome"] for t in r.tests] == ["passed", "timeout"]
    assert (
        r.tests[1]["reason"]
        == "not run: the lab's time budget of 1 s was used up by earlier checks"
    )
    # a check stuck beyond the budget: the grader kills the check process
    (lab / "checks" / "test_a.py").write_text(
        "import time\n\ndef test_stuck():\n    time.sleep(60)\n"
    )
    monkeypatch.setattr(runner, "HARD_KILL_GRACE_S", 1.0)
    r = runner.grade_one(load_lab(lab), sub, tmp_path / "o2", user_base=grading_env)
    assert r.status == "timed_out" and r.score == 0 and r.execution_time < 20
    assert r.tests[0]["reason"].startswith("not run: grading stopped after the lab's time budget")


def test_gradescope_entry_point(grading_env, tmp_path):
    ag = tmp_path / "autograder"
    (ag / "submission").mkdir(parents=True)
    (ag / "submission" / "app.py").write_text((ECHO / "starter" / "app.py").read_text())
    (ag / "submission_metadata.json").write_text(
        json.dumps({"id": 77, "users": [{"email": "a@b.c", "id": 5}]})
    )
    script = Path(__file__).parent.parent / "autograder" / "run_autograder"
    env = dict(os.environ, AUTOGRADER_ROOT=str(ag), LAB="echo", NSLAB_LABS=str(DATA / "labs"))
    env["NSLAB"] = str(Path(sys.executable).parent / "nslab")
    res = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads((ag / "results" / "results.json").read_text())["score"] == 3
    # the zip Gradescope gets, precomputed results and hosted containers:
    # tests/test_autograder_bundle.py


@pytest.mark.parametrize("due, shown", [("2020-01-01", 2), ("2999-01-01", 1), (None, 1)])
def test_public_view_and_the_due_date(grading_env, tmp_path, due, shown):
    lab = make_lab(
        tmp_path,
        "due",
        "title: Due\nname: du\n" + (f"due: {due}\n" if due else ""),
        {
            "test_a.py": """
            import pytest
            def test_visible():
                pass
            @pytest.mark.visibility("after_due_date")
            def test_after():
                pass
            @pytest.mark.visibility("hidden")
            def test_hidden():
                pass
            """
        },
    )
    sub = tmp_path / "s"
    sub.mkdir()
    r = runner.grade_one(
        load_lab(lab), sub, tmp_path / "o", visibility="public", user_base=grading_env
    )
    assert len(r.tests) == shown and r.all_passed


def test_variants_multiply_checks_and_hide_with_their_variant(grading_env, tmp_path):
    lab = make_lab(
        tmp_path,
        "var",
        """
        title: Variants
        name: va
        params: {n: 1}
        variants:
          two: {params: {n: 2}, visibility: hidden, weight: 0.5}
        """,
        {
            "test_a.py": '''
            import pytest

            @pytest.mark.points(4)
            def test_any(lab):
                """n is positive"""
                assert lab.params["n"] > 0

            @pytest.mark.variants("two")
            def test_two_only(lab):
                assert lab.params["n"] == 2

            def test_no_lab():
                pass
            '''
        },
    )
    sub = tmp_path / "s"
    sub.mkdir()
    r = runner.grade_one(load_lab(lab), sub, tmp_path / "all", user_base=grading_env)
    got = {(t["name"], t["max_score"], t["visibility"]) for t in r.tests}
    assert got == {
        ("n is positive", 4, "visible"),
        ("n is positive [two]", 2, "hidden"),
        ("test_two_only [two]", 0.5, "hidden"),
        ("test_no_lab", 1, "visible"),
    }
    assert r.score == r.max_score == 7.5
    public = runner.grade_one(
        load_lab(lab), sub, tmp_path / "pub", visibility="public", user_base=grading_env
    )
    assert sorted(t["name"] for t in public.tests) == ["n is positive", "test_no_lab"]


def test_lab_start_keeps_it_up_until_stop(grading_env, tmp_path):
    labs = tmp_path / "labs"
    shutil.copytree(ECHO, labs / "tgrd-echo")
    env = dict(os.environ, NSLAB_LABS=str(labs))
    state = STATE_DIR / "tgrd-echo.json"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nslab", "lab", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    try:
        assert "tgrd-echo  Squares" in cli("list").stdout
        up = cli("start", "tgrd-echo", "--submission", str(ECHO / "solution"))
        assert up.returncode == 0, up.stderr
        st = json.loads(state.read_text())
        port, workdir = st["ports"]["app"], Path(st["workdir"])
        assert "tests) (running)" in cli("list").stdout
        with socket.create_connection(
            ("127.0.0.1", port), timeout=5
        ) as s:  # still up after the CLI exited
            s.sendall(b"12\n")
            assert s.recv(100) == b"144\n"
        again = cli("start", "tgrd-echo")
        assert again.returncode != 0 and "already running" in again.stderr
        down = cli("stop", "tgrd-echo")
        assert down.returncode == 0, down.stderr
        assert not state.exists() and not workdir.exists()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        assert "is not running" in cli("stop", "tgrd-echo").stderr
    finally:
        if state.exists():
            cli("stop", "tgrd-echo")
        shutil.rmtree("/run/nslab-labs/tgrd-echo", ignore_errors=True)
