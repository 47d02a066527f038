"""Shared helpers of the grader's tests (test_grading_*.py). Sandbox users
and host paths made here carry the prefix tgrd and are removed again."""

from __future__ import annotations

import contextlib
import os
import pwd
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from nslab.grading import sandbox

DATA = Path(__file__).parent / "data" / "grading"
ECHO = DATA / "labs" / "echo"
SUBS = DATA / "submissions"
# Base of this test run's sandbox users (tgNNNNNs, tgNNNNNs1, ...): unique per
# pytest process, so that suites running side by side never delete each other's.
USER = f"tg{os.getpid() % 100000:05d}s"


def _users(base: str = USER) -> list[str]:
    """The sandbox users of `base`: base, base1, base2, ... (as leased by gradings)."""
    return [
        p.pw_name
        for p in pwd.getpwall()
        if p.pw_name == base or (p.pw_name.startswith(base) and p.pw_name[len(base) :].isdigit())
    ]


@pytest.fixture(scope="module")
def grading_env() -> Iterator[str]:
    """Root, a prefix for host paths and dedicated sandbox users for the tests."""
    if os.geteuid() != 0:
        pytest.skip("grading needs root (sandbox users, mounts)")
    old = {k: os.environ.get(k) for k in ("NSLAB_GRADE_PREFIX", "NSLAB_STUDENT_USER")}
    os.environ["NSLAB_GRADE_PREFIX"] = "tgrd"
    os.environ["NSLAB_STUDENT_USER"] = USER
    try:
        yield USER
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for u in _users():
            sandbox.remove_user(u)


@contextlib.contextmanager
def graded_as(prefix: str, user: str) -> Iterator[str]:
    """Gradings under the instance/path prefix `prefix` with the sandbox users
    `user`, `user`1, ... (for --jobs 2); the environment is restored and the
    users are removed after."""
    old = os.environ.get("NSLAB_GRADE_PREFIX")
    os.environ["NSLAB_GRADE_PREFIX"] = prefix
    try:
        yield user
    finally:
        if old is None:
            os.environ.pop("NSLAB_GRADE_PREFIX", None)
        else:
            os.environ["NSLAB_GRADE_PREFIX"] = old
        for u in _users(user):
            sandbox.remove_user(u)


def survivors(marks: list[str]) -> list[str]:
    """Processes whose command line carries one of `marks` (a hostile
    submission's markers): what outlived a grading."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
            except OSError:
                continue
            if any(m in cmd for m in marks):
                out.append(f"{pid}: {cmd}")
    return out


def make_lab(
    root: Path,
    name: str,
    lab_yaml: str,
    checks: dict[str, str],
    files: dict[str, str] | None = None,
) -> Path:
    """A throwaway lab folder: lab.yaml, checks/<file>, and extra files."""
    lab = root / name
    (lab / "checks").mkdir(parents=True)
    (lab / "lab.yaml").write_text(textwrap.dedent(lab_yaml))
    for fname, text in checks.items():
        (lab / "checks" / fname).write_text(textwrap.dedent(text))
    for fname, text in (files or {}).items():
        p = lab / fname
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return lab


def leftovers(prefix: str = "tgrd") -> list[str]:
    """Work dirs, grading dirs and mounts of a grading run that were not removed."""
    left = [str(p) for p in Path("/tmp").glob(f"{prefix}-work-*")]
    left += [str(p) for p in Path("/tmp").glob(f"{prefix}-grade-*")]
    with open("/proc/self/mountinfo") as f:
        left += [line.split()[4] for line in f if f"/tmp/{prefix}-work-" in line]
    return left
