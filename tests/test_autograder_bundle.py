"""Gradescope end to end: `nslab autograder bundle` builds the zip, and the
zip works the way Gradescope's harness uses it: unpacked into
/autograder/source, setup.sh run from there, run_autograder copied to
/autograder/ and run per submission, results.json read from
/autograder/results. A scratch folder stands for /autograder
(AUTOGRADER_ROOT). Also: the score CSVs of `nslab grade`, and submissions
that come zipped or nested in a folder."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import grading_support
import pytest
from grading_support import ECHO

from nslab.grading import submissions
from nslab.grading.bundle import build_bundle

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent  # the kit's venv these tests run in
grading_env = grading_support.grading_env
VISIBILITIES = {"visible", "hidden", "after_due_date", "after_published"}


def _course(root: Path) -> Path:
    """A course repository with the squares lab (fast to grade) and the kit's scripts."""
    repo = root / "course"
    shutil.copytree(ECHO, repo / "labs" / "10-sq")
    for rel in ("autograder/setup.sh", "autograder/run_autograder", "scripts/provision.sh"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, repo / rel)
    return repo


def _unpack(bundle: Path, root: Path) -> Path:
    """What Gradescope does with the zip: /autograder/source, submission, results."""
    ag = root / "autograder"
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(ag / "source")
        for info in zf.infolist():  # zipfile drops modes: restore them as unzip does
            mode = info.external_attr >> 16
            if mode:
                os.chmod(ag / "source" / info.filename, mode & 0o777)
    (ag / "submission").mkdir()
    (ag / "results").mkdir()
    meta = {"id": 777, "users": [{"email": "alice@example.edu", "id": 42}]}
    (ag / "submission_metadata.json").write_text(json.dumps(meta))
    return ag


def _harness(ag: Path, env: dict[str, str]) -> dict:
    """setup.sh from source/, then /autograder/run_autograder; returns results.json."""
    env = dict(env, AUTOGRADER_ROOT=str(ag))
    r = subprocess.run(
        ["bash", "./setup.sh"], cwd=ag / "source", env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    shutil.copy2(ag / "source" / "run_autograder", ag / "run_autograder")
    r = subprocess.run(
        [str(ag / "run_autograder")], cwd=ag, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads((ag / "results" / "results.json").read_text())


def _gradescope_shape(doc: dict) -> None:
    """Gradescope's results.json spec, the fields nslab writes."""
    assert isinstance(doc["score"], (int, float)) and isinstance(
        doc["execution_time"], (int, float)
    )
    assert isinstance(doc["output"], str) and isinstance(doc["tests"], list)
    for t in doc["tests"]:
        assert set(t) >= {"name", "score", "max_score", "output", "visibility", "status"}, t
        assert t["visibility"] in VISIBILITIES and t["status"] in ("passed", "failed"), t
        assert 0 <= t["score"] <= t["max_score"], t


def test_bundle_layout(tmp_path: Path):
    repo = _course(tmp_path)
    z = build_bundle(repo, "10-sq", tmp_path / "sq.zip")
    with zipfile.ZipFile(z) as zf:
        names = set(zf.namelist())
        modes = {i.filename: i.external_attr >> 16 for i in zf.infolist()}
        env = zf.read("lab.env").decode()
    assert {"setup.sh", "run_autograder", "lab.env"} <= names
    assert modes["run_autograder"] & 0o111 and modes["setup.sh"] & 0o111
    assert "LAB=10-sq" in env and "MODE=grade" in env
    assert "kit/labs/10-sq/lab.yaml" in names and "kit/labs/10-sq/checks/test_squares.py" in names
    assert not [n for n in names if "/solution/" in n], "the bundle must not carry the solution"


@pytest.mark.root
def test_gradescope_harness_grades_a_submission(tmp_path: Path, grading_env):
    repo = _course(tmp_path)
    ag = _unpack(build_bundle(repo, "10-sq", tmp_path / "sq.zip"), tmp_path)
    shutil.copy(ECHO / "solution" / "app.py", ag / "submission" / "app.py")
    doc = _harness(ag, dict(os.environ, NSLAB_VENV=str(VENV)))
    _gradescope_shape(doc)
    assert doc["score"] == doc["max_score"] == 11, doc
    assert {t["visibility"] for t in doc["tests"]} >= {"visible", "hidden"}


def test_hosted_gradescope_copies_precomputed_results(tmp_path: Path):
    """Hosted containers cannot emulate networks: results graded on a VM are copied by key."""
    repo = _course(tmp_path)
    pre = tmp_path / "pre"
    pre.mkdir()
    graded = {"score": 7, "execution_time": 3.5, "output": "graded on the VM", "tests": []}
    (pre / "alice@example.edu.json").write_text(json.dumps(graded))
    z = build_bundle(repo, "10-sq", tmp_path / "h.zip", precomputed=pre, mode="precomputed")
    ag = _unpack(z, tmp_path)
    assert not (ag / "source" / "kit").exists()  # hosted: nothing to install
    doc = _harness(ag, dict(os.environ, NSLAB_AG_HOSTED="1"))
    assert doc == graded
    (ag / "submission_metadata.json").write_text(json.dumps({"id": 1, "users": []}))
    subprocess.run([str(ag / "run_autograder")], env=dict(os.environ, AUTOGRADER_ROOT=str(ag)))
    doc = json.loads((ag / "results" / "results.json").read_text())
    _gradescope_shape(doc)
    assert doc["score"] == 0 and "grading VM" in doc["output"]


def test_run_autograder_without_lab_env_writes_a_clear_result(tmp_path: Path):
    ag = tmp_path / "autograder"
    (ag / "source").mkdir(parents=True)
    shutil.copy2(REPO / "autograder" / "run_autograder", ag / "run_autograder")
    r = subprocess.run(
        [str(ag / "run_autograder")],
        env=dict(os.environ, AUTOGRADER_ROOT=str(ag)),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "nslab autograder bundle" in r.stderr
    doc = json.loads((ag / "results" / "results.json").read_text())
    _gradescope_shape(doc)
    assert "misconfigured" in doc["output"]


def test_submissions_zipped_or_nested(tmp_path: Path):
    nested = tmp_path / "alice" / "handin" / "lab0"
    nested.mkdir(parents=True)
    (nested / "app.py").write_text("print(1)\n")
    (tmp_path / "alice" / "notes.txt").write_text("hi\n")
    assert submissions.find_root(tmp_path / "alice", ["app.py"]) == nested
    z = tmp_path / "bob.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("__MACOSX/._lab0", "junk")
        zf.writestr("lab0/app.py", "print(2)\n")
    got = submissions.prepare(z, ["app.py"], tmp_path / "scratch", 5)
    assert got.name == "lab0" and (got / "app.py").read_text() == "print(2)\n"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../etc/owned", "x")
    with pytest.raises(submissions.SubmissionError, match="outside the zip"):
        submissions.prepare(evil, ["app.py"], tmp_path / "scratch2", 5)
    assert not (tmp_path.parent / "etc" / "owned").exists()


@pytest.mark.root
def test_grade_takes_zips_and_writes_platform_csvs(tmp_path: Path, grading_env):
    z = tmp_path / "carol@example.edu.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(ECHO / "solution" / "app.py", "my-lab/app.py")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "nslab", "grade", str(ECHO), str(z), str(ECHO / "starter")]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    gs = list(csv.reader(open(out / "gradescope-scores.csv")))
    assert gs[0] == ["Name", "SID", "Email", "Total Score"]
    assert ["", "", "carol@example.edu", "11"] in gs and ["", "starter", "", "3"] in gs
    cv = list(csv.reader(open(out / "canvas-scores.csv")))
    assert cv[0][:5] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
    assert cv[1][0] == "Points Possible" and cv[1][-1] == "11"
    assert ["", "", "", "carol@example.edu", "", "11"] in cv
