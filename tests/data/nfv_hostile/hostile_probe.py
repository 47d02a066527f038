"""Lab 1 hostile submission, the part its napt.py, ids.py and lb1.py share
(tests/test_nf_hostile_lab1.py copies the starter NFs and calls run() first).

It tries what a student who wants points without the work would try, and
prints each result as a `hostile:` line, which the test reads in the NF's log:

* the kit's answer: NAPT / IPRewriter / HTTPInspector from nslab.nf;
* patching the grader's classes (nslab.grading.runtime.GradedLab) at import;
* reading checks and solutions by any path: the file system from /, every
  process's root and cwd, /proc/*/cmdline and environ, git directories, the
  grader's venv, earlier outputs; a solution it finds for its own NF, it runs
  instead of itself (so a leak would raise its score);
* forging the NF reports, from a forked child that leaves the NF's session
  and outlives it, rewriting `<nf>.report` until long after grading.
"""

from __future__ import annotations

import glob
import json
import os
import runpy
import sys
import time

SECRETS = (
    b"def _report_agrees",  # labs/01-nfv/checks/test_nfv.py
    b"def traffic_plan",  # labs/01-nfv/checks/conftest.py
    b"class NAPT(Element)",  # the lab's solution (once in the kit)
    b"class IPRewriter(Element)",
    b"class HTTPInspector(Element)",
)
GRADER_WORDS = (b"pytest", b"nslab.nf.backend", b"nfv_client", b"tcpdump", b"nslab grade")
NFS = ("napt", "ids", "lb1")


def say(msg: str) -> None:
    print(f"hostile: {msg}", flush=True)


def kit_answer() -> list[str]:
    got = []
    import nslab.nf

    for name in ("NAPT", "IPRewriter", "HTTPInspector"):
        if hasattr(nslab.nf, name):
            got.append(name)
    for mod in ("nslab.nf.http_inspect", "nslab.grading.runtime", "nslab.grading.plugin"):
        try:
            __import__(mod)
            got.append(mod)
        except Exception:  # noqa: BLE001 - absent is the expected answer
            pass
    return got


def patch_grader() -> None:
    try:
        import nslab.grading.runtime as runtime

        runtime.GradedLab.read_output = lambda self, rel, max_bytes=0: "{}"
        say("PATCHED nslab.grading.runtime.GradedLab")
    except Exception as exc:  # noqa: BLE001
        say(f"no grader class to patch ({type(exc).__name__})")


def foreign_processes() -> list[str]:
    """Processes of the grader (or of anything but this sandbox) that are visible."""
    seen = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            cmd = open(f"{d}/cmdline", "rb").read()
        except OSError:
            continue
        if any(w in cmd for w in GRADER_WORDS):
            seen.append(f"{d}: {cmd[:100]!r}")
    return seen


def find_secrets(
    nf: str, budget_s: float = 4.0, first: tuple[str, ...] = ()
) -> tuple[list[str], str | None]:
    """Readable files holding checks or solutions, and a solution of `nf`
    (`first`: folders searched before the rest, for the test's control)."""
    found: list[str] = []
    mine: str | None = None
    roots = [*first, "/", "/proc/1/root", "/proc/1/cwd"]
    roots += glob.glob("/proc/[0-9]*/root") + glob.glob("/proc/[0-9]*/cwd")
    for d in glob.glob("/proc/[0-9]*"):
        try:
            env = open(f"{d}/environ", "rb").read()
        except OSError:
            continue
        for var in env.split(b"\0"):  # the grader's venv, checkout, outputs
            if var.startswith((b"VIRTUAL_ENV=", b"PWD=", b"NSLAB_GRADE_CONFIG=")):
                roots.append(var.split(b"=", 1)[1].decode(errors="replace"))
    roots += ["/tmp", "/run", "/var/tmp", "/opt", "/root", "/home", "/srv"]
    end = time.monotonic() + budget_s
    skip = ("/proc", "/sys", "/dev", "/usr/share", "/usr/lib", "/var/lib/dpkg")
    for root in dict.fromkeys(roots):
        for dirpath, dirs, files in os.walk(root):
            if time.monotonic() > end:
                return found, mine
            if dirpath.startswith(skip) and not dirpath.startswith("/proc/"):
                dirs[:] = []
                continue
            if dirpath.startswith("/proc/") and dirpath.count("/") < 3:
                dirs[:] = [x for x in dirs if x in ("root", "cwd")]
            if ".git" in dirs:
                found.append(f"{dirpath}/.git")
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(dirpath, f)
                try:
                    with open(path, "rb") as fh:
                        data = fh.read(200_000)
                except OSError:
                    continue
                if any(s in data for s in SECRETS) and b"hostile" not in data:
                    found.append(path)
                    if f == f"{nf}.py" and mine is None:
                        mine = path
    return found, mine


def forge_reports(seconds: float = 900) -> None:
    """A child that leaves the NF's session and rewrites every NF report."""
    if os.fork() != 0:
        return
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    forged = {
        "nf": "forged",
        "interfaces": {f"eth{i}": {"in_packets": 1000, "out_packets": 1000} for i in range(3)},
        "classes": {},
        "drops": {},
        "total_drops": 0,
    }
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for nf in NFS:
            try:
                with open(f".{nf}.tmp", "w") as f:
                    json.dump(forged, f)
                os.replace(f".{nf}.tmp", f"{nf}.report")
            except OSError:
                pass
        time.sleep(0.2)
    os._exit(0)


def run(nf: str) -> None:
    say(f"kit answer: {', '.join(kit_answer()) or 'none'}")
    patch_grader()
    procs = foreign_processes()
    say(f"foreign processes {len(procs)}")
    for p in procs[:5]:
        say(f"FOUND process {p}")
    found, mine = find_secrets(nf)
    for path in found[:20]:
        say(f"FOUND {path}")
    forge_reports()
    say("probe done")
    if mine is not None:  # a solution: run it instead of the starter
        sys.argv[0] = mine
        runpy.run_path(mine, run_name="__main__")
        sys.exit(0)
