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

from nslab import cgroup
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


def sandboxed(user, code: str, cwd: str, cgroup_spec: str | None = None, timeout: float = 30):
    """`code` run by the kit's interpreter through the sandbox wrapper."""
    argv = sandbox.wrapper_argv(user=user, limits=sandbox.Limits(), cwd=cwd, cgroup=cgroup_spec)
    return subprocess.run(
        [*argv, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=sandbox.student_env(cwd),
    )


@pytest.mark.skipif(not sandbox.has_bwrap(), reason="bubblewrap is not installed")
def test_the_sandbox_sees_no_checkout_no_grader_and_no_other_work(user):
    """Student code sees the OS, the kit's venv and public packages, its own
    work dir and a private /tmp: not the checkout (checks, solutions, .git),
    not another work dir, not the grader's processes."""
    from nslab.labs import REPO_ROOT, labs_root

    wd = sandbox.make_workdir("/tmp", "tgrd-view-", user, sandbox.Limits(), None)
    other = Path(tempfile.mkdtemp(prefix="tgrd-other-", dir="/tmp"))
    (other / "answer.txt").write_text("42")
    git_dir = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--absolute-git-dir"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    probe = f"""
import json, os
def can(p):
    try:
        os.listdir(p) if os.path.isdir(p) else open(p).read(1)
        return True
    except OSError:
        return False
print(json.dumps({{
    "labs": can({str(labs_root() / "00-sdn-warmup" / "lab.yaml")!r}),
    "git": bool({git_dir!r}) and can({git_dir!r} + "/HEAD"),
    "tests": can({str(REPO_ROOT / "tests")!r}),
    "other": can({str(other / "answer.txt")!r}),
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "own": can("mine.txt") or open("mine.txt", "w").write("x") == 1,
    "nslab": __import__("nslab").__name__,
}}))
"""
    try:
        r = sandboxed(user, probe, str(wd))
        assert r.returncode == 0, r.stderr
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        assert seen["nslab"] == "nslab" and seen["own"]
        assert not seen["labs"] and not seen["git"] and not seen["tests"] and not seen["other"]
        assert max(seen["pids"]) < 10, f"grader processes visible: {seen['pids']}"
    finally:
        sandbox.remove_workdir(wd)
        subprocess.run(["rm", "-rf", str(other)])


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by init a little later)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.mark.skipif(not cgroup.available(), reason="no writable cgroup v2 tree")
@pytest.mark.parametrize("fs_view", ["bwrap", "none"])
def test_a_forked_daemon_does_not_outlive_the_submission(user, fs_view, monkeypatch):
    """A daemon that double-forks and leaves its session outlives the program
    that started it, with bubblewrap's view or without it (NSLAB_SANDBOX_FS=0),
    but not its cgroup: one kill ends it (what GradedLab.stop and the batch
    runner do after every submission)."""
    if fs_view == "bwrap" and not sandbox.has_bwrap():
        pytest.skip("bubblewrap is not installed")
    monkeypatch.setenv("NSLAB_SANDBOX_FS", "1" if fs_view == "bwrap" else "0")
    wd = sandbox.make_workdir("/tmp", "tgrd-fork-", user, sandbox.Limits(), None)
    lab = f"tgrdcg{os.getpid()}"
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        open('daemon.pid', 'w').write(str(os.getpid())); time.sleep(300)\n"
        "    os._exit(0)\n"
        "while not os.path.exists('daemon.pid'): time.sleep(0.01)\n"
    )
    try:
        env = dict(sandbox.student_env(str(wd)), NSLAB_SANDBOX_FS=os.environ["NSLAB_SANDBOX_FS"])
        argv = sandbox.wrapper_argv(
            user=user, limits=sandbox.Limits(), cwd=str(wd), cgroup=f"{lab}/student/x"
        )
        # no pipes: the daemon would hold them open
        r = subprocess.run([*argv, sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30, env=env)  # fmt: skip
        assert r.returncode == 0
        left = cgroup.pids(lab)
        assert left, "the daemon should still run (it escaped its parent)"
        assert cgroup.kill(lab)
        assert not [p for p in left if _running(p)]
        assert lab not in cgroup.labs()
    finally:
        cgroup.kill(lab)
        sandbox.remove_workdir(wd)


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


@pytest.mark.skipif(not cgroup.available(), reason="no writable cgroup v2 tree")
def test_freezing_student_code_stops_it_while_the_grader_measures(user):
    """GradedLab.student_frozen: a spinning student process gets no CPU while frozen."""
    wd = sandbox.make_workdir("/tmp", "tgrd-frz-", user, sandbox.Limits(), None)
    lab = f"tgrdfz{os.getpid()}"
    argv = sandbox.wrapper_argv(
        user=user, limits=sandbox.Limits(), cwd=str(wd), cgroup=f"{lab}/student/spin"
    )
    proc = subprocess.Popen([*argv, sys.executable, "-c", "while True: pass"],
                            env=sandbox.student_env(str(wd)))  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while cgroup.usage(lab, "student").get("cpu_s", 0) < 0.2:
            assert time.monotonic() < deadline and proc.poll() is None, "it never ran"
            time.sleep(0.05)
        cgroup.freeze(lab, "student", True)
        frozen_at = cgroup.usage(lab, "student")["cpu_s"]
        time.sleep(0.5)
        assert cgroup.usage(lab, "student")["cpu_s"] - frozen_at < 0.05
        cgroup.freeze(lab, "student", False)
        deadline = time.monotonic() + 10
        while cgroup.usage(lab, "student")["cpu_s"] - frozen_at < 0.1:
            assert time.monotonic() < deadline, "it did not resume"
            time.sleep(0.05)
    finally:
        cgroup.kill(lab)
        proc.wait(timeout=10)
        sandbox.remove_workdir(wd)


def test_two_gradings_on_one_machine_get_different_users():
    """Grading kills every process of its sandbox users before and after each
    submission, so two batches (or a batch and a student's `nslab check`)
    must never share one: each holds a lease (a file lock) on its users while
    it runs, and the next one skips them. A lease dies with its holder."""
    base = f"tlease{os.getpid() % 10000}"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from nslab.grading import sandbox\n"
         f"with sandbox.lease_users({base!r}, 2) as us:\n"
         "    print(' '.join(us), flush=True)\n"
         "    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().split() == [base, f"{base}1"]
        with sandbox.lease_users(base, 2) as mine:
            assert mine == [f"{base}2", f"{base}3"]
            with sandbox.lease_users(base, 1) as (third,):  # one process, two gradings
                assert third == f"{base}4"
        holder.kill()
        holder.wait(10)
        with sandbox.lease_users(base, 1) as (again,):  # the holder died: its lease with it
            assert again == base
    finally:
        holder.kill()
        from nslab.engine.state import RUN_DIR

        for f in (RUN_DIR / "users").glob(f"{base}*.lock"):
            f.unlink()
