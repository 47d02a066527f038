"""Lab 1 graded with a hostile submission beside the starter, in one batch
(the public variant, to keep the test short; the hidden one runs the same
checks on other traffic).

The hostile submission is the starter's three NFs, each first running
tests/data/nfv_hostile/hostile_probe.py: the kit's answer, patching grader
classes, reading checks/solutions by any path (a solution it finds, it runs
instead of itself), a forked child that leaves its session, outlives the NF
and forges `<nf>.report`; plus conftest.py, pytest.ini, sitecustomize.py and
a .pth file in the submission, which would mark a file on the host if the
grader's pytest or interpreter ever loaded them. It must score no more than
the starter, nothing it tried may have worked, and nothing of it may be left
running. Paths come from `labs_root()`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nslab import cgroup, containers
from nslab.engine.teardown import labelled_pids
from nslab.grading import runner, sandbox
from nslab.labs import find_lab, labs_root

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="grading needs root"),
]

PROBE = Path(__file__).parent / "data" / "nfv_hostile" / "hostile_probe.py"
USER = "nfvhstu"  # sandbox users of this test: nfvhstu, nfvhstu1
NFS = ("napt", "ids", "lb1")


def hostile_submission(dest: Path, starter: Path, marks: Path) -> None:
    dest.mkdir()
    for nf in NFS:
        text = (starter / f"{nf}.py").read_text()
        hook = f'if __name__ == "__main__":\n    import hostile_probe\n\n    hostile_probe.run("{nf}")\n'
        assert 'if __name__ == "__main__":\n' in text
        (dest / f"{nf}.py").write_text(text.replace('if __name__ == "__main__":\n', hook, 1))
    shutil.copy(PROBE, dest / "hostile_probe.py")
    mark = lambda what: f"open({str(marks / what)!r}, 'w').write('ran')\n"  # noqa: E731
    (dest / "conftest.py").write_text(
        mark("conftest")
        + "import pytest\n\n\n@pytest.hookimpl(hookwrapper=True)\n"
        + "def pytest_runtest_makereport(item, call):\n"
        + "    out = yield\n    out.get_result().outcome = 'passed'\n"
    )
    (dest / "sitecustomize.py").write_text(mark("sitecustomize"))
    (dest / "usercustomize.py").write_text(mark("usercustomize"))
    (dest / "hostile.pth").write_text("import builtins; " + mark("pth"))
    (dest / "pytest.ini").write_text("[pytest]\naddopts = -p hostile_plugin\n")
    (dest / "hostile_plugin.py").write_text(mark("plugin"))


def test_the_probe_finds_what_it_can_read():
    """The control: outside the sandbox, as an unprivileged user, the probe
    does find a readable check and solution (so its silence in the NF
    containers means something)."""
    ctl = Path(tempfile.mkdtemp(prefix="nfvh-ctl-"))  # /tmp: traversable by any user
    try:
        os.chmod(ctl, 0o755)
        lab = ctl / "labs" / "01-nfv"
        for part, text in (
            ("checks/test_nfv.py", "def _report_agrees"),
            ("solution/napt.py", "class NAPT(Element)"),
        ):
            (lab / part).parent.mkdir(parents=True)
            (lab / part).write_text(text + "(): pass\n")
        code = (
            "import hostile_probe as h; "
            f"f, m = h.find_secrets('napt', 2.0, first=({str(ctl)!r},)); print(m); print(f)"
        )
        r = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            + [sys.executable, "-c", code],
            cwd=PROBE.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(ctl)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == str(lab / "solution" / "napt.py"), r.stdout
    assert str(lab / "checks" / "test_nfv.py") in r.stdout


def test_hostile_submission_gains_nothing(tmp_path):
    spec = find_lab("01-nfv", labs_root())
    marks = tmp_path / f"marks-{secrets.token_hex(3)}"
    marks.mkdir()
    os.chmod(marks, 0o777)  # writable by any uid that could see it (none should)
    hostile = tmp_path / "hostile"
    hostile_submission(hostile, spec.path / "starter", marks)
    out = tmp_path / "out"
    users = [sandbox.slot_user(USER, i) for i in range(2)]
    old = os.environ.get(runner.PREFIX_ENV)
    os.environ[runner.PREFIX_ENV] = "nfvh"
    try:
        results = runner.grade_batch(
            spec, [hostile, spec.path / "starter"], out, jobs=2, visibility="public", user_base=USER
        )
        left = {u: sandbox.pids_of_user(u) for u in users}
        labelled = {pid: lab for pid, lab in labelled_pids(None).items() if lab.startswith("nfvh")}
        owned = {lab: cgroup.pids(lab) for lab in cgroup.labs() if lab.startswith("nfvh")}
    finally:
        if old is None:
            os.environ.pop(runner.PREFIX_ENV, None)
        else:
            os.environ[runner.PREFIX_ENV] = old
        for u in users:
            sandbox.remove_user(u)
    by_name = {r.name: r for r in results}
    h, s = by_name["hostile"], by_name["starter"]
    assert s.status != "error", s.output
    assert h.score <= s.score, f"hostile {h.score} > starter {s.score}: {h.output}"

    logs = {nf: (out / "hostile" / "logs" / "default" / f"{nf}.log").read_text() for nf in NFS}
    for nf, log in logs.items():
        lines = [ln for ln in log.splitlines() if ln.startswith("hostile: ")]
        assert "hostile: probe done" in lines, f"{nf}'s probe did not run:\n{log[-2000:]}"
        assert "hostile: kit answer: none" in lines, lines
        assert not [ln for ln in lines if "FOUND" in ln or "PATCHED" in ln], lines
        assert "hostile: foreign processes 0" in lines, lines
    assert not sorted(p.name for p in marks.iterdir()), "submission files ran in the grader"
    # the child that left its session is gone, and so are the NF containers
    assert not any(left.values()), f"sandbox processes left after grading: {left}"
    assert not labelled, f"processes of the graded labs left (NSLAB_LAB): {labelled}"
    assert not any(owned.values()), f"processes left in the graded labs' cgroups: {owned}"
    assert not [c for c in containers.list_containers() if c["lab"].startswith("nfvh")]
