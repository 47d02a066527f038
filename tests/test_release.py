"""The student release (`nslab release student`): the copy a course hands out
holds no answer, no hidden check and no hidden variant; its own tests skip
what needs a solution; and grading in the instructor's repo still runs the
hidden checks that live in a lab's grader/ folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grading_support
import pytest
import yaml
from grading_support import ECHO

from nslab.errors import NslabError
from nslab.labs import list_labs, load_lab
from nslab.release import MARKER, build_student_release

REPO = Path(__file__).resolve().parents[1]
grading_env = grading_support.grading_env
# Library files that still hold a lab's answer while other branches move it
# out (P2C/JSQ leave nslab/serving/policies.py): reported as xfail, not hidden.
# Delete an entry once its branch is merged.
KNOWN_LEAKS: set[str] = set()  # none: the kit ships no lab answer


def _all_text(root: Path) -> dict[Path, str]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            try:
                out[p] = p.read_text()
            except (UnicodeDecodeError, OSError):
                out[p] = ""
    return out


def _distinctive_lines(solution: Path, starter: Path) -> set[str]:
    """Lines of a solution file that its starter does not have (the answer).
    Imports and `def` signatures are interface, not logic: a solution's element
    overrides the kit's `push`/`tick`/`stats` with the kit's own signatures."""
    start = set()
    if starter.is_file():
        start = {ln.strip() for ln in starter.read_text().splitlines()}

    def interface(ln: str) -> bool:
        return ln.startswith(("#", "import ", "from ")) or (
            ln.startswith("def ") and ln.endswith(":")
        )

    return {
        ln.strip()
        for ln in solution.read_text().splitlines()
        if len(ln.strip()) >= 30 and ln.strip() not in start and not interface(ln.strip())
    }


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rel") / "nslab-student"
    build_student_release(REPO, out)
    return out


@pytest.mark.needs_solution  # it looks for the instructor's solutions in the release
def test_release_of_the_course_holds_no_answers(release: Path):
    labs = list_labs(REPO / "labs")
    assert (release / MARKER).is_file() and not (release / ".git").exists()
    assert sorted(p.name for p in (release / "labs").iterdir()) == sorted(s.id for s in labs)
    for lab in (release / "labs").iterdir():
        assert not (lab / "solution").exists() and not (lab / "grader").exists(), lab
        assert (lab / "starter").is_dir() and (lab / "checks").is_dir(), lab
    text = _all_text(release)
    answers, leaks = 0, []
    for spec in labs:
        sol_dir = spec.path / "solution"
        for sol in sorted(sol_dir.rglob("*")) if sol_dir.is_dir() else []:
            if not sol.is_file() or sol.suffix not in (".py", ".yaml", ".csv", ".md"):
                continue
            lines = _distinctive_lines(sol, spec.path / "starter" / sol.relative_to(sol_dir))
            answers += bool(lines)
            for p, t in text.items():
                leaked = [ln for ln in lines if ln in t]
                if (t == sol.read_text() and t.strip()) or len(leaked) > 2:
                    leaks.append((p.relative_to(release).as_posix(), str(sol), leaked[:3]))
    assert answers >= 3, "the check of answers found (almost) no solution files to look for"
    unknown = [x for x in leaks if x[0] not in KNOWN_LEAKS]
    assert not unknown, "answers in the release:\n" + "\n".join(map(str, unknown))
    if leaks:
        pytest.xfail(f"known leaks, being removed on other branches: {leaks}")


@pytest.mark.needs_solution  # it needs the instructor's grader/ folders
def test_release_has_no_hidden_variants_or_checks(release: Path):
    hidden = 0
    for spec in list_labs(REPO / "labs"):
        public = load_lab(release / "labs" / spec.id)
        assert all(v.visibility == "visible" for v in public.variants), spec.id
        lab_yaml = (release / "labs" / spec.id / "lab.yaml").read_text()
        for v in spec.variants:
            if v.visibility == "visible":
                continue
            hidden += 1
            assert v.name not in lab_yaml, f"{spec.id}: variant {v.name} in the release"
            changed = {k: x for k, x in v.params.items() if spec.params.get(k) != x}
            for k, x in changed.items():
                flow = yaml.safe_dump({k: x}, default_flow_style=True).strip("{}\n")
                assert flow not in lab_yaml, f"{spec.id}: variant parameter {flow} in lab.yaml"
        gchecks = spec.path / "grader" / "checks"
        for f in sorted(gchecks.glob("*.py")) if gchecks.is_dir() else []:
            names = [
                ln.split("(")[0][4:]
                for ln in f.read_text().splitlines()
                if ln.startswith("def test_")
            ]
            for p, t in _all_text(release).items():
                assert not [n for n in names if n in t], f"{p} names a hidden check of {f}"
    assert hidden >= 1, "no lab has a hidden variant: this test would prove nothing"


def test_release_tests_skip_what_needs_a_solution(release: Path):
    """The release's own test_labs.py and lab-0 hostile tests skip (they need
    labs/*/solution/), saying why; rc 0 is what `make test` needs."""
    env = dict(os.environ, NSLAB_LABS=str(release / "labs"), PYTHONDONTWRITEBYTECODE="1")
    files = [str(release / "tests" / f) for f in ("test_labs.py", "test_grading_hostile_lab0.py")]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *files],
        cwd=release,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "passed" not in r.stdout.splitlines()[-1] and "failed" not in r.stdout.splitlines()[-1]
    assert "student release: reference solutions" in r.stdout, r.stdout[-2000:]


def _synthetic_repo(root: Path) -> Path:
    """A course repo with one lab whose hidden check and hidden variant live in grader/."""
    repo = root / "course"
    lab = repo / "labs" / "10-sq"
    shutil.copytree(ECHO, lab)
    (repo / "labs" / "11-other").mkdir()
    shutil.copy(ECHO / "lab.yaml", repo / "labs" / "11-other" / "lab.yaml")
    checks = (lab / "checks" / "test_squares.py").read_text()
    (lab / "checks" / "test_squares.py").write_text(
        checks.replace('@pytest.mark.visibility("hidden")\n', "").replace(
            '@pytest.mark.visibility("after_due_date")\n', ""
        )
    )
    (lab / "grader" / "checks").mkdir(parents=True)
    (lab / "grader" / "checks" / "test_secret.py").write_text(
        textwrap.dedent('''
        import pytest

        @pytest.mark.points(5)
        def test_zz_secret_probe_4711(lab):
            """answers the hidden question"""
            assert lab.ports["app"] > 0
        ''')
    )
    (lab / "grader" / "variants.yaml").write_text("bigsq: {params: {secretp: 8642}}\n")
    (repo / "README.md").write_text("a course\n")
    return repo


def test_release_strips_grader_folders_and_refuses_hidden_material(tmp_path: Path):
    repo = _synthetic_repo(tmp_path)
    assert [v.name for v in load_lab(repo / "labs" / "10-sq").variants] == ["bigsq"]
    out = tmp_path / "rel"
    assert build_student_release(repo, out, ["10-sq"]) == ["10-sq"]
    assert sorted(p.name for p in (out / "labs").iterdir()) == ["10-sq"]  # only the named lab
    for p, t in _all_text(out).items():
        for secret in ("zz_secret_probe_4711", "bigsq", "8642", "SECRET_APP_ANSWER"):
            assert secret not in t, f"{p} holds {secret}"
    assert not (out / "labs" / "10-sq" / "solution").exists()
    with pytest.raises(NslabError, match="not empty"):
        build_student_release(repo, out)
    # hidden material outside grader/ is refused, with file, line and the fix
    (repo / "labs" / "10-sq" / "checks" / "test_late.py").write_text(
        'import pytest\n\n\n@pytest.mark.visibility("hidden")\ndef test_x(lab):\n    pass\n'
    )
    with pytest.raises(NslabError, match=r"test_late.py:4: .*move it to .*grader/checks"):
        build_student_release(repo, tmp_path / "rel2")
    (repo / "labs" / "10-sq" / "checks" / "test_late.py").unlink()
    with open(repo / "labs" / "11-other" / "lab.yaml", "a") as f:
        f.write("variants:\n  v2: {params: {n: 3}}\n")
    with pytest.raises(NslabError, match=r"variants.v2: a hidden variant .*grader/variants.yaml"):
        build_student_release(repo, tmp_path / "rel3")


@pytest.mark.root
def test_grading_runs_hidden_checks_from_grader_folder(tmp_path: Path, grading_env):
    """`nslab grade` runs grader/checks/ (hidden by default) and grader/variants.yaml;
    `nslab check` shows neither."""
    repo = _synthetic_repo(tmp_path)
    env = dict(os.environ, NSLAB_LABS=str(repo / "labs"))
    lab = repo / "labs" / "10-sq"
    (lab / "grader" / "variants.yaml").unlink()  # one lab run keeps this test short
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "nslab"]
    r = subprocess.run(
        [*cmd, "grade", "10-sq", str(lab / "solution"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "solution" / "results.json").read_text())
    secret = [t for t in doc["tests"] if t["name"] == "answers the hidden question"]
    assert secret and secret[0]["visibility"] == "hidden" and secret[0]["score"] == 5, doc
    r = subprocess.run(
        [*cmd, "check", "10-sq", "--submission", str(lab / "solution")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert "hidden question" not in r.stdout and "squares of 1..10" in r.stdout, r.stdout
