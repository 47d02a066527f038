"""Hostile and broken lab 0 submissions (a real leaf-spine with OVS and the
student's os-ken app), graded in one batch that must go on past each:

- `crash`: a controller that dies at import breaks the lab and scores 0 fast;
- `hostile`: the reference solution plus a tail that snoops for checks and
  solutions by every path it can derive from the kit (labs_root(), the
  installed package, git objects), forges results, kills what it can and
  leaves a CPU-burning grandchild behind: it keeps full marks, learns no
  secret, and its child does not outlive the grading;
- `kit`: the starter plus a tail that loads the kit's own controller app
  (fabric_router, alias l2_learning) by module path, by file next to the
  installed package, by the runner's name lookup and by os-ken's / Ryu's app
  loader, serves it as `LearningSwitch`, and patches nslab.controller.fabric
  and the kit's measurement functions at import: it scores no more than the
  starter (whose points come from the two checks any loop-safe flooding
  fabric passes: reachability and no ARP storm; tests/test_labs.py grades
  the starter itself).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal

import pytest
from grading_support import DATA

from nslab.grading import sandbox
from nslab.grading.runner import grade_batch
from nslab.labs import find_lab, labs_root

pytestmark = [pytest.mark.root, pytest.mark.slow]
LAB0 = labs_root() / "00-sdn-warmup"
# Names of its own (sandbox users tgrdzl, tgrdzl1; lab prefix tgrdz), so that
# other grading tests running at the same time on a shared machine, whose
# cleanup removes the users tgrdstu*, cannot pull them from under this one.
USER, PREFIX = "tgrdzl", "tgrdz"


@pytest.fixture
def grading_env():
    if os.geteuid() != 0:
        pytest.skip("grading needs root (sandbox users, mounts)")
    old = {k: os.environ.get(k) for k in ("NSLAB_GRADE_PREFIX", "NSLAB_STUDENT_USER")}
    os.environ.update(NSLAB_GRADE_PREFIX=PREFIX, NSLAB_STUDENT_USER=USER)
    try:
        yield USER
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for p in pwd.getpwall():
            if p.pw_name == USER or (
                p.pw_name.startswith(USER) and p.pw_name[len(USER) :].isdigit()
            ):
                sandbox.remove_user(p.pw_name)


# What the starter earns: the checks a safe flooding fabric passes.
STARTER_CHECKS = ("every host reaches every other host", "ARP does not circle")
# First lines of the grader-only files: they must not show up in a log.
SECRETS = ("Lab 0 reference solution", "Lab 0 checks: what the fabric does")


def logs(out, name: str) -> str:
    return "".join(p.read_text() for p in sorted((out / name / "logs").glob("*/controller.log")))


def outlived(text: str) -> list[int]:
    """The grandchildren the hostile controller reported that still run."""
    alive = []
    for pid in map(int, re.findall(r"^CHILD (\d+)$", text, re.M)):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue  # gone
        if b"nslab.controller" in cmdline:  # still the controller's fork, not a reused pid
            alive.append(pid)
    return alive


@pytest.mark.skipif(not (LAB0 / "solution").is_dir(), reason="lab 0 has no solution/ yet")
def test_lab0_hostile_controllers(grading_env, tmp_path):
    subs = []
    for name, base, tail in (
        ("hostile", "solution", "hostile_tail.py"),
        ("kit", "starter", "kit_tail.py"),
    ):
        d = tmp_path / name
        d.mkdir()
        code = (LAB0 / base / "learning_switch.py").read_text()
        (d / "learning_switch.py").write_text(code + "\n\n" + (DATA / "lab0" / tail).read_text())
        subs.append(d)
    out = tmp_path / "out"
    children: list[int] = []
    try:
        rs = {
            r.name: r
            for r in grade_batch(
                find_lab("00-sdn-warmup"),
                [DATA / "lab0" / "crash", *subs],
                out,
                jobs=2,
                user_base=grading_env,
            )
        }
        hostile_log = logs(out, "hostile")
        children = outlived(hostile_log)
    finally:
        for pid in children:  # leave the host as found even when the test fails
            os.kill(pid, signal.SIGKILL)

    broken = rs["crash"]
    assert broken.status == "ok" and broken.score == 0 and broken.execution_time < 200
    assert all("did not come up" in t["reason"] for t in broken.tests), broken.tests[0]["reason"]

    good = rs["hostile"]
    failed = [f"{t['name']}: {t['reason']}" for t in good.tests if t["outcome"] != "passed"]
    assert good.score == good.max_score, failed
    doc = json.loads((out / "hostile" / "results.json").read_text())
    assert doc["score"] == good.score != 999
    assert "CHILD" in hostile_log, "the hostile tail did not run"
    assert not children, f"the submission's children outlived its grading: {children}"
    assert re.search(r"^(READ|DENIED) .*/solution/", hostile_log, re.M), "probed no solution"
    assert "GIT" in hostile_log, "probed no git objects"
    leaked = [s for s in SECRETS if s in hostile_log]

    kit = rs["kit"]
    kit_log = logs(out, "kit")
    assert "PATCHED" in kit_log, "the kit tail did not run"
    starter_level = sum(t["max_score"] for t in kit.tests if t["name"].startswith(STARTER_CHECKS))
    earned = {t["name"]: t["score"] for t in kit.tests if t["score"]}
    assert kit.status == "ok" and kit.score <= starter_level, (
        f"loading the kit's controller earned {kit.score} > the starter's {starter_level}: "
        f"{earned}\n{kit_log[-2000:]}"
    )
    if "KIT LOADED" in kit_log:  # the kit's router was reachable: it refused or flooded
        assert "switches-only view" in kit_log or kit.score <= starter_level

    # Last, so that every verdict above is checked first: what the bubblewrap
    # sandbox must keep from the graded controller.
    holes = [f"grader-only text {leaked} (checkout, git objects)"] if leaked else []
    if "STATE LEAK" in kit_log:
        holes.append("the engine's topology.pickle with the hosts' MACs (/run/nslab)")
    assert not holes, "the sandboxed controller read " + "; ".join(holes)
