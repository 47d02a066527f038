"""The sandbox for student code: a dedicated unprivileged user, rlimits that
hold, cleanup that kills exactly that user's processes, and a work dir with
its own disk quota. Real processes, real users, real mounts."""

from __future__ import annotations

import json
import os
import pwd
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grading_support
import pytest
from grading_support import ECHO

from nslab.grading import sandbox

pytestmark = pytest.mark.root
grading_env = grading_support.grading_env  # the shared fixture


@pytest.fixture(scope="module")
def user(grading_env):
    name = grading_env + "9"  # not a grading slot's user: these tests may run beside grading tests
    sandbox.ensure_user(name)
    yield name
    sandbox.remove_user(name)


def run_as(user, code: str, limits: sandbox.Limits | None = None, timeout: float = 30):
    return subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=sandbox.demote(user, limits or sandbox.Limits(), cwd="/"),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=sandbox.student_env("/"),
    )


def test_user_is_a_system_user_without_login(user):
    pw = pwd.getpwnam(user)
    assert pw.pw_uid != 0 and pw.pw_shell == "/usr/sbin/nologin"
    assert sandbox.ensure_user(user).pw_uid == pw.pw_uid  # idempotent


def test_demote_drops_to_the_user_with_limits(user):
    lim = sandbox.Limits(cpu_s=50, memory_mb=300, nproc=20, fsize_mb=3, nofile=100)
    code = (
        "import os, resource as r, json; print(json.dumps([os.getuid(), os.getgroups(),"
        " [r.getrlimit(x) for x in (r.RLIMIT_CPU, r.RLIMIT_AS, r.RLIMIT_NPROC, r.RLIMIT_FSIZE, r.RLIMIT_NOFILE)]]))"
    )
    res = run_as(user, code, lim)
    uid, groups, limits = json.loads(res.stdout)
    assert uid == pwd.getpwnam(user).pw_uid and groups == []
    mb = 1 << 20
    assert [tuple(x) for x in limits] == [
        (50, 50),
        (300 * mb, 300 * mb),
        (20, 20),
        (3 * mb, 3 * mb),
        (100, 100),
    ]


def test_exec_wrapper_for_namespaces(user):
    res = subprocess.run(
        [sys.executable, "-m", "nslab.grading.sandbox", "--user", user, "--limits", '{"nproc": 7}']
        + ["--", "sh", "-c", "id -u; grep 'Max processes' /proc/self/limits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    uid, limits = res.stdout.splitlines()
    assert uid == str(pwd.getpwnam(user).pw_uid) and limits.split()[2:4] == ["7", "7"]


def test_a_fork_bomb_is_bounded_and_killed(user):
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", bomb],
        preexec_fn=sandbox.demote(user, sandbox.Limits(nproc=10), cwd="/"),
    )
    try:
        time.sleep(1.5)
        assert 1 <= len(sandbox.pids_of_user(user)) <= 10
    finally:
        t0 = time.monotonic()
        sandbox.kill_user_processes(user)
        p.wait(timeout=10)
    assert sandbox.pids_of_user(user) == [] and time.monotonic() - t0 < 10


def test_file_size_cpu_and_memory_limits(user, tmp_path):
    wd = Path(tempfile.mkdtemp(prefix="tgrd-sbx-", dir="/tmp"))
    try:
        os.chown(wd, pwd.getpwnam(user).pw_uid, -1)
        big = run_as(
            user, f"open('{wd}/f', 'wb').write(b'x' * (3 << 20))", sandbox.Limits(fsize_mb=1)
        )
        assert big.returncode != 0 and (wd / "f").stat().st_size <= 1 << 20
        t0 = time.monotonic()
        spin = run_as(user, "while True: pass", sandbox.Limits(cpu_s=1), timeout=60)
        assert spin.returncode < 0 and time.monotonic() - t0 < 60  # SIGXCPU / SIGKILL
        mem = run_as(user, "x = bytearray(400 << 20)", sandbox.Limits(memory_mb=200))
        assert mem.returncode != 0 and "MemoryError" in mem.stderr
    finally:
        subprocess.run(["rm", "-rf", str(wd)])


def test_workdir_has_its_own_quota_and_copies_links_as_links(user, tmp_path):
    src = tmp_path / "sub"
    src.mkdir()
    (src / "app.py").write_text("print('hi')\n")
    (src / "pkg").mkdir()
    (src / "pkg" / "m.py").write_text("x = 1\n")
    (src / "leak").symlink_to("/etc/shadow")
    os.mkfifo(src / "fifo")  # copying it would block: skipped
    os.mkfifo(src / "pkg" / "fifo")
    wd = sandbox.make_workdir("/tmp", "tgrd-work-", user, sandbox.Limits(disk_mb=4), src)
    try:
        st = wd.stat()
        assert st.st_uid == pwd.getpwnam(user).pw_uid and st.st_mode & 0o777 == 0o700
        assert (wd / "leak").is_symlink() and (wd / "pkg" / "m.py").read_text() == "x = 1\n"
        assert not (wd / "fifo").exists() and not (wd / "pkg" / "fifo").exists()
        leak = run_as(user, f"print(open('{wd}/leak').read())")
        assert "Permission denied" in leak.stderr
        fill = run_as(
            user, f"open('{wd}/fill', 'wb').write(b'x' * (8 << 20))", sandbox.Limits(fsize_mb=64)
        )
        assert "No space left on device" in fill.stderr  # the tmpfs quota, not the host's disk
    finally:
        sandbox.remove_workdir(wd)
    assert not wd.exists()
    assert str(wd) not in Path("/proc/self/mountinfo").read_text()


def test_protected_dirs_are_unreadable_for_the_student(user):
    d = Path(tempfile.mkdtemp(prefix="tgrd-secret-", dir="/tmp"))
    try:
        os.chmod(d, 0o755)
        (d / "s.txt").write_text("secret")
        os.chmod(d / "s.txt", 0o644)
        assert "secret" in run_as(user, f"print(open('{d}/s.txt').read())").stdout
        assert sandbox.protect(d) and not sandbox.protect(d)
        assert "Permission denied" in run_as(user, f"print(open('{d}/s.txt').read())").stderr
    finally:
        subprocess.run(["rm", "-rf", str(d)])


def test_limits_are_clamped_to_hard_limits():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    d = sandbox.Demote(
        "nobody",
        sandbox.Limits(nofile=hard + 1000 if hard != resource.RLIM_INFINITY else 10),
        None,
        False,
    )
    got = dict(d.rlimits)[resource.RLIMIT_NOFILE]
    assert got[0] <= hard or hard == resource.RLIM_INFINITY


def test_refuses_root():
    with pytest.raises(sandbox.NslabError, match="root"):
        sandbox.demote("root")
    assert ECHO.is_dir()
