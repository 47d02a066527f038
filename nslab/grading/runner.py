"""Grade submissions: each in its own pytest process, with a time budget,
student code sandboxed, checks run from a root-only copy, results written
by this (root) process only.

    grade_batch(find_lab("00-sdn-warmup"), [Path("subs/alice"), ...], Path("out"), jobs=2)
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nslab import cgroup, host
from nslab.engine.state import RUN_DIR
from nslab.errors import NslabError
from nslab.grading import outputs, sandbox, submissions
from nslab.grading.result import SubmissionResult
from nslab.labs import GRADER_DIR, LabSpec

PREFIX_ENV = "NSLAB_GRADE_PREFIX"  # prefix of everything a grading run creates on the host
_SKIP_COPY = {"solution", "starter", "__pycache__", ".pytest_cache"}
MAX_SUBMISSION_MB = 50
HARD_KILL_GRACE_S = 30.0  # after the time budget, the check process is killed this much later


def _prefix() -> str:
    return os.environ.get(PREFIX_ENV, "nslab")


def _instance_name(prefix: str) -> str:
    """A short lab instance name (interface names are <name>-<node>-<iface>,
    at most 15 chars) that no running lab uses."""
    head = prefix[:4] if prefix != "nslab" else "g"
    n = 5 - len(head)
    for _ in range(200):
        name = head + "".join(random.choices(string.ascii_lowercase + string.digits, k=n))
        if not _in_use(name) and not _claimed(name):
            return name
    raise NslabError("no free lab instance name: too many labs running?")


def _in_use(name: str) -> bool:
    """A running lab is called `name` or `name` plus a variant digit (which
    `_force_down(name)` would take down)."""
    taken = set(cgroup.labs()) | (
        {p.name for p in RUN_DIR.iterdir()} if RUN_DIR.is_dir() else set()
    )
    return any(t == name or (t.startswith(name) and t[len(name) :].isdigit()) for t in taken)


_CLAIMED: set[str] = set()
_CLAIM_LOCK = threading.Lock()


def _claimed(name: str) -> bool:
    with _CLAIM_LOCK:
        if name in _CLAIMED:
            return True
        _CLAIMED.add(name)
        return False


def _release(name: str) -> None:
    with _CLAIM_LOCK:
        _CLAIMED.discard(name)


def _dir_size_mb(path: Path) -> float:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total / 1e6


def _copy_lab(spec: LabSpec, dest: Path) -> tuple[Path, list[str]]:
    """Copy what grading needs (lab.yaml, checks/, grader/, topology files;
    never solution/ or starter/) into the root-only grading dir. The hidden
    checks of `grader/checks/` join the public ones in checks/ (so they share
    its conftest.py); their file names are returned: their checks are hidden
    unless marked otherwise."""
    target = dest / spec.id
    shutil.copytree(
        spec.path,
        target,
        symlinks=True,
        ignore=lambda d, names: [n for n in names if n in _SKIP_COPY],
    )
    hidden = []
    gchecks = spec.path / GRADER_DIR / "checks"
    for f in sorted(gchecks.glob("*.py")) if gchecks.is_dir() else []:
        if (target / "checks" / f.name).exists():
            raise NslabError(
                f"{f}: checks/{f.name} exists too; give the hidden check file another name"
            )
        (target / "checks").mkdir(exist_ok=True)
        shutil.copy(f, target / "checks" / f.name)
        if f.name.startswith("test_"):
            hidden.append(f.name)
    return target, hidden


def grade_one(
    spec: LabSpec,
    submission: Path,
    out_dir: Path,
    *,
    name: str | None = None,
    visibility: str = "all",
    user_base: str | None = None,
    user: str | None = None,
    keep: bool = False,
) -> SubmissionResult:
    """Grade one submission into `out_dir` (results.json, junit.xml,
    report.html, logs/) as the sandbox user `user` (a user of `user_base`
    leased for it when None). Never raises for anything the submission does."""
    if user is None:
        with sandbox.lease_users(user_base, 1) as (leased,):
            return grade_one(
                spec, submission, out_dir, name=name, visibility=visibility, user=leased, keep=keep
            )
    t0, psi0 = time.monotonic(), host.cpu_pressure_us()
    submission = Path(submission)
    res = SubmissionResult(
        name or submission.name,
        str(submission),
        "error",
        lab_id=spec.id,
        lab_title=spec.title,
        visibility=visibility,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)  # the TA's (root): no later submission reads it
    prefix = _prefix()
    gdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-grade-"))  # 0700, root only
    workdir: Path | None = None
    instance = _instance_name(prefix)
    try:
        try:  # a .zip, or the files inside a folder of their own
            submission = submissions.prepare(
                submission, spec.submit, gdir / "unpacked", MAX_SUBMISSION_MB
            )
        except submissions.SubmissionError as exc:
            res.output = str(exc)
            return res
        if _dir_size_mb(submission) > MAX_SUBMISSION_MB:
            res.output = f"{submission}: larger than {MAX_SUBMISSION_MB} MB; not graded"
            return res
        sandbox.ensure_user(user)
        sandbox.kill_user_processes(user)  # leftovers of an earlier, interrupted run
        lab_copy, hidden_files = _copy_lab(spec, gdir / "lab")
        limits = sandbox.Limits.from_dict(spec.limits)
        workdir = sandbox.make_workdir("/tmp", f"{prefix}-work-", user, limits, submission)
        cfg = {
            "lab_dir": str(lab_copy),
            "submission": str(workdir),
            "user": user,
            "limits": limits.as_dict(),
            "visibility": visibility,
            "hidden_files": hidden_files,
            "results": str(gdir / "results.jsonl"),
            "logs": str(gdir / "logs"),
            "artifacts": str(gdir / "artifacts"),
            "instance": instance,
            "time_budget": spec.time_budget,
        }
        (gdir / "config.json").write_text(json.dumps(cfg, indent=1))
        (gdir / "pytest.ini").write_text("[pytest]\naddopts =\n")
        rc, timed_out = _run_pytest(gdir, lab_copy / "checks", spec.time_budget + HARD_KILL_GRACE_S)
        _collect(res, gdir, rc, timed_out, spec)
    except NslabError as exc:
        res.status, res.output = "error", str(exc)
    finally:
        # Everything of this grading, student code and grader services alike.
        for name in cgroup.labs():  # this grading's instance and its variants' (name + digit)
            if name == instance or (name.startswith(instance) and name[len(instance) :].isdigit()):
                cgroup.kill(name)
        sandbox.kill_user_processes(user)
        _force_down(instance)
        _release(instance)
        if workdir is not None:
            sandbox.remove_workdir(workdir)
        res.execution_time = round(time.monotonic() - t0, 2)
        psi1 = host.cpu_pressure_us()
        if psi0 is not None and psi1 is not None and res.execution_time > 0:
            res.cpu_contention_pct = round((psi1 - psi0) / (res.execution_time * 1e4), 1)
        _write_outputs(res, gdir, out_dir)
        if keep:
            print(f"kept grading dir {gdir}", file=sys.stderr)
        else:
            shutil.rmtree(gdir, ignore_errors=True)
    return res


def _run_pytest(gdir: Path, checks: Path, limit: float) -> tuple[int, bool]:
    cmd = [sys.executable, "-m", "pytest", "-c", str(gdir / "pytest.ini"), "--rootdir", str(checks)]
    cmd += ["-p", "nslab.grading.plugin", "-p", "no:cacheprovider", "-p", "no:timeout"]
    cmd += [
        "-p",
        "no:randomly",
        "-q",
        "-rN",
        "--color=no",
        "--nslab-config",
        str(gdir / "config.json"),
    ]
    cmd.append(str(checks))
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    with open(gdir / "pytest.log", "w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=gdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=limit), False
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            return -1, True


def _collect(res: SubmissionResult, gdir: Path, rc: int, timed_out: bool, spec: LabSpec) -> None:
    collected_path = gdir / "collected.json"
    results_path = gdir / "results.jsonl"
    if not collected_path.exists():
        res.status = "error"
        res.output = (
            "the checks could not be collected (a problem of the lab, not of the submission):\n"
        )
        res.output += _tail(gdir / "pytest.log", 30)
        return
    collected = json.loads(collected_path.read_text())
    done: dict[str, dict] = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            if line.strip():
                e = json.loads(line)
                done[e["nodeid"]] = e
    if timed_out:
        why = f"not run: grading stopped after the lab's time budget ({spec.time_budget:g} s)"
        res.status = "timed_out"
        res.output = f"grading timed out after {spec.time_budget:g} s"
    elif rc not in (0, 1):
        why = f"not run: the check process exited with code {rc}"
        res.status = "crashed"
        res.output = f"the check process exited with code {rc}:\n{_tail(gdir / 'pytest.log', 20)}"
    else:
        why = "not run"
        res.status = "ok"
    tests = []
    for c in collected:
        e = done.get(c["nodeid"])
        if e is None:
            e = {
                **c,
                "outcome": "error",
                "score": 0.0,
                "reason": why,
                "values": {},
                "plots": [],
                "notes": [],
            }
        tests.append(e)
    res.tests = tests
    res.score = round(sum(t["score"] for t in tests), 4)
    res.max_score = round(sum(t["max_score"] for t in tests), 4)


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _force_down(instance: str) -> None:
    """Take down lab instances a killed check process left behind (this run's names only)."""
    run_dir = RUN_DIR
    names = [p.name for p in run_dir.glob(f"{instance}*")] if run_dir.is_dir() else []
    for n in names:
        if n != instance and not (n[len(instance) :].isdigit() and len(n) == len(instance) + 1):
            continue
        try:
            from nslab.engine import Lab

            Lab.attach(n).down()
        except Exception as exc:  # best effort: report, never stop the batch
            print(f"nslab grade: could not take down lab {n}: {exc}", file=sys.stderr)


def _write_outputs(res: SubmissionResult, gdir: Path, out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(outputs.results_json(res), indent=2))
    (out_dir / "junit.xml").write_text(outputs.junit_xml(res))
    (out_dir / "report.html").write_text(outputs.report_html(res))
    if (gdir / "pytest.log").exists():
        shutil.copy(gdir / "pytest.log", out_dir / "grader.log")
    for sub in ("logs", "artifacts"):
        src = gdir / sub
        if src.is_dir():
            shutil.rmtree(out_dir / sub, ignore_errors=True)
            shutil.copytree(src, out_dir / sub, symlinks=True)


def unique_names(submissions: list[Path]) -> list[str]:
    """Result folder names: the basename (without .zip), with -2, -3, ... where two clash."""
    seen: dict[str, int] = {}
    names = []
    for s in submissions:
        p = Path(s).resolve()
        base = (p.stem if p.suffix.lower() == ".zip" else p.name) or "submission"
        n = seen.get(base, 0) + 1
        seen[base] = n
        name = base if n == 1 else f"{base}-{n}"
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def grade_batch(
    spec: LabSpec,
    submissions: list[Path],
    out: Path,
    jobs: int = 1,
    visibility: str = "all",
    user_base: str | None = None,
    progress: Callable[[SubmissionResult, int, int], None] | None = None,
) -> list[SubmissionResult]:
    """Grade every submission (up to `jobs` at once, each slot with its own
    student user); writes out/<name>/... and out/summary.csv."""
    if jobs < 1:
        raise NslabError("--jobs must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    names = unique_names(submissions)
    slots: queue.Queue[str] = queue.Queue()  # the batch's leased users: one per slot
    results: list[SubmissionResult | None] = [None] * len(submissions)
    done = [0]
    lock = threading.Lock()

    def work(i: int) -> None:
        user = slots.get()
        try:
            r = grade_one(
                spec,
                submissions[i],
                out / names[i],
                name=names[i],
                visibility=visibility,
                user=user,
            )
        except Exception as exc:  # a grader bug must not stop the batch either
            r = SubmissionResult(
                names[i], str(submissions[i]), "error", output=f"grader error: {exc!r}"
            )
            outputs_dir = out / names[i]
            outputs_dir.mkdir(parents=True, exist_ok=True)
            (outputs_dir / "results.json").write_text(json.dumps(outputs.results_json(r), indent=2))
        finally:
            slots.put(user)
        results[i] = r
        with lock:
            done[0] += 1
            if progress:
                progress(r, done[0], len(submissions))

    with sandbox.lease_users(user_base, jobs) as users, ThreadPoolExecutor(jobs) as ex:
        for u in users:
            slots.put(u)
        list(ex.map(work, range(len(submissions))))
    final = [r for r in results if r is not None]
    outputs.write_summary(final, out / "summary.csv")
    outputs.write_score_csvs(final, out, spec.title)
    return final
