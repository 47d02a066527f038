"""Run student code as an unprivileged user with resource limits.

The grader (root) never runs student code as root. `demote(user, limits)`
returns a function for `subprocess.Popen(preexec_fn=...)` that lowers the
rlimits (CPU seconds, address space, process count, file size, open files,
no core dumps) and drops to the student user. Lowering limits needs no
privilege; raising above a hard limit fails, so limits are clamped to the
current hard limits.

RLIMIT_NPROC counts every process of a user, so each concurrent grading slot
gets its own dedicated system user (`nslab-student`, `nslab-student1`, ...):
a fork bomb in one submission cannot starve another, and after a submission
`kill_user_processes` kills exactly the processes of that slot's user (only
sandboxed student code ever runs as it). `lease_users` hands a grading its
users for as long as it runs, so a second batch or a student's `nslab check`
on the same machine gets other ones; a lab a student starts (`nslab lab
start`) runs its code as a `nslab-live` user of its own.

Used as a program, it is an exec wrapper for places where a preexec function
cannot be passed (e.g. after `ip netns exec`):

    python -m nslab.grading.sandbox --user nslab-student --limits '{"nproc": 32}' -- cmd args
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from nslab.errors import NslabError

DEFAULT_USER = "nslab-student"
LIVE_USER = "nslab-live"  # base name of the users of labs a student starts
_MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Resource limits of sandboxed student code (see lab.yaml `limits:`)."""

    cpu_s: int = 600  # CPU seconds (RLIMIT_CPU): SIGXCPU, then SIGKILL
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    nproc: int = 64  # processes+threads of the user (RLIMIT_NPROC)
    fsize_mb: int = 64  # largest file it may write (RLIMIT_FSIZE)
    nofile: int = 1024  # open files (RLIMIT_NOFILE)
    disk_mb: int = 256  # size of the work dir when it is a tmpfs

    @classmethod
    def from_dict(cls, d: dict | None) -> Limits:
        d = d or {}
        known = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in known})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def rlimits(self) -> list[tuple[int, int]]:
        return [
            (resource.RLIMIT_CPU, self.cpu_s),
            (resource.RLIMIT_AS, self.memory_mb * _MB),
            (resource.RLIMIT_NPROC, self.nproc),
            (resource.RLIMIT_FSIZE, self.fsize_mb * _MB),
            (resource.RLIMIT_NOFILE, self.nofile),
            (resource.RLIMIT_CORE, 0),
        ]


def slot_user(base: str | None, slot: int) -> str:
    """The dedicated user of grading slot `slot` (0: the base name itself)."""
    base = base or os.environ.get("NSLAB_STUDENT_USER", DEFAULT_USER)
    return base if slot == 0 else f"{base}{slot}"


@contextlib.contextmanager
def lease_users(base: str | None, n: int) -> Iterator[list[str]]:
    """`n` sandbox users of `base` (base, base1, base2, ...) that no other
    grading holds, for as long as the block runs: a file lock per user in
    /run/nslab/users, which the kernel drops if this process dies, so a crash
    leaves no stale lease (only the file, which the next holder reuses).
    Grading kills every process of its users before and after each
    submission: the lease is what makes that safe beside another batch."""
    from nslab.engine.state import RUN_DIR

    d = RUN_DIR / "users"
    d.mkdir(parents=True, exist_ok=True)
    held: list[tuple[Path, int]] = []
    try:
        for slot in range(n + 64):
            if len(held) == n:
                break
            path = d / f"{slot_user(base, slot)}.lock"
            fd = _lock(path)
            if fd is not None:
                held.append((path, fd))
        if len(held) < n:
            raise NslabError(
                f"only {len(held)} of {n} sandbox users named {slot_user(base, 0)}[N] are free: "
                "other gradings hold the rest; wait for them, or give --user another name"
            )
        yield [p.name.removesuffix(".lock") for p, _ in held]
    finally:
        for path, fd in held:  # removed while still locked: a waiter re-checks (_lock)
            path.unlink(missing_ok=True)
            os.close(fd)


def _lock(path: Path) -> int | None:
    """An fd holding the lock of `path`, or None when another process holds it.
    A lock taken on a file its holder has just removed is no lock: retried."""
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def ensure_user(name: str) -> pwd.struct_passwd:
    """Create `name` as a system user without login shell or home, if missing.
    Idempotent and safe when several graders race (file lock)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise NslabError(f"user '{name}' does not exist and only root can create it (run as root)")
    from nslab.engine.state import RUN_DIR

    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / ".useradd.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
        res = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
            ]
            + ["--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise NslabError(f"cannot create user '{name}': {res.stderr.strip()}")
    return pwd.getpwnam(name)


def remove_user(name: str) -> None:
    """Delete a user created by `ensure_user` (used by tests for their own users)."""
    kill_user_processes(name)
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", name], capture_output=True)


def _clamped(res: int, value: int) -> tuple[int, int]:
    _soft, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    return value, value


class Demote:
    """A picklable `preexec_fn` (the engine pickles it for its supervisor)
    that applies limits and runs the child as the student user. Works whether
    the caller is root (drops to the user) or Popen already switched user
    (`Popen(user=...)` happens before preexec_fn): then it only applies limits."""

    def __init__(self, user: str, limits: Limits | None, cwd: str | None, new_session: bool):
        pw = pwd.getpwnam(user)
        if pw.pw_uid == 0:
            raise NslabError(f"refusing to sandbox as '{user}': it is root")
        self.uid, self.gid, self.cwd, self.new_session = pw.pw_uid, pw.pw_gid, cwd, new_session
        self.rlimits = [(res, _clamped(res, v)) for res, v in (limits or Limits()).rlimits()]
        self.switch_user = True  # False: the caller's exec (setpriv) switches user
        self.umask = 0o077

    def __call__(self) -> None:
        if self.new_session:
            try:
                os.setsid()
            except OSError:
                pass  # already a session leader (e.g. Popen(start_new_session=True))
        for res, pair in self.rlimits:
            resource.setrlimit(res, pair)
        if not self.switch_user:
            pass
        elif os.geteuid() == 0:
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)
        elif os.geteuid() != self.uid:
            raise PermissionError(f"cannot switch from uid {os.geteuid()} to {self.uid}")
        os.umask(self.umask)
        if self.cwd:
            os.chdir(self.cwd)


def demote(
    user: str, limits: Limits | None = None, cwd: str | None = None, new_session: bool = True
) -> Callable[[], None]:
    """A `preexec_fn` that applies `limits` and runs the child as `user`
    (in its own session unless `new_session` is False)."""
    return Demote(user, limits, cwd, new_session)


def student_env(workdir: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for student code: nothing of the grader's leaks in."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra or {})
    return env


def pids_of_user(user: str) -> list[int]:
    uid = pwd.getpwnam(user).pw_uid
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid != uid:
                    continue
                with open(f"/proc/{d}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):  # zombies are dead already; their parent reaps them
                    out.append(int(d))
            except (OSError, IndexError):
                pass
    return out


def kill_user_processes(user: str, deadline_s: float = 10.0) -> int:
    """SIGKILL every process of the dedicated student `user`; returns how
    many were left after the first sweep. A child that becomes the user and
    calls kill(-1) hits all of them in one go (even a fork bomb), and is
    repeated until none is left."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return 0
    if pw.pw_uid == 0:
        raise NslabError("refusing to kill processes of root")
    first = len(pids_of_user(user))
    end = time.monotonic() + deadline_s
    while pids_of_user(user) and time.monotonic() < end:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.setgroups([])
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.05)
    return first


def make_workdir(
    parent: str | Path, prefix: str, user: str, limits: Limits, source: Path | None
) -> Path:
    """A fresh work dir owned by `user` (mode 0700), on its own size-limited
    tmpfs where the host allows mounts (a disk quota for the student), with
    `source` copied in. Symlinks are copied as links, never followed as root."""
    import tempfile

    pw = pwd.getpwnam(user)
    wd = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    opts = f"size={limits.disk_mb}m,nr_inodes=20000,mode=0700,uid={pw.pw_uid},gid={pw.pw_gid}"
    # No mount privilege (e.g. a container without CAP_SYS_ADMIN): a plain dir,
    # bounded only by RLIMIT_FSIZE per file.
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts + ",nosuid,nodev", "nslab-work", str(wd)],
        capture_output=True,
    )
    if source is not None:
        for item in sorted(Path(source).iterdir()):
            dst = wd / item.name
            if item.is_symlink() or item.is_file():
                shutil.copy2(item, dst, follow_symlinks=False)
            elif item.is_dir():
                shutil.copytree(item, dst, symlinks=True, ignore=_special_files)
    for dirpath, dirnames, filenames in os.walk(wd):
        for n in dirnames + filenames:
            os.lchown(os.path.join(dirpath, n), pw.pw_uid, pw.pw_gid)
    os.chown(wd, pw.pw_uid, pw.pw_gid)
    os.chmod(wd, 0o700)
    return wd


def _special_files(dirpath: str, names: list[str]) -> list[str]:
    """FIFOs, sockets and devices: copying them would block or mean nothing."""
    out = []
    for n in names:
        st = os.lstat(os.path.join(dirpath, n))
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            out.append(n)
    return out


def remove_workdir(wd: str | Path) -> None:
    wd = str(wd)
    if _is_mountpoint(wd):
        r = subprocess.run(["umount", wd], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", wd], capture_output=True)
    shutil.rmtree(wd, ignore_errors=True)


def _is_mountpoint(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f)
    except OSError:
        return False


def with_ambient_caps(uid: int, gid: int, caps: list[str], cmd: list[str]) -> list[str]:
    """`cmd` run by setpriv as uid/gid holding only `caps` (ambient, so they
    survive exec into python): e.g. an NF's raw sockets without root."""
    if not caps:
        return [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            *cmd,
        ]
    plus = ",".join(f"+{c}" for c in caps)
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        f"--inh-caps=-all,{plus}",
        f"--ambient-caps={plus}",
        f"--bounding-set=-all,{plus}",  # setuid binaries cannot gain more either
        "--",
        *cmd,
    ]


# -- the file-system view of student code ------------------------------------

# The OS parts student code sees (read-only). An allow-list: whatever else the
# machine holds (checkouts, other submissions, grader outputs, homes) is absent.
_OS_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/sys")


def kit_paths() -> list[str]:
    """What student code may see of the kit: the interpreter's environment
    (the venv) and the public packages `nslab` and `ryu`. Nothing else of the
    checkout: not labs/ (solutions, checks), controller/, tests/ or .git."""
    import nslab

    pkg = Path(nslab.__file__).resolve().parent
    paths = [str(pkg), str(pkg.parent / "ryu"), sys.prefix]
    return [p for p in dict.fromkeys(paths) if os.path.exists(p)]


def _os_view() -> list[str]:
    argv: list[str] = []
    for d in _OS_DIRS:
        if os.path.islink(d):  # merged /usr: /bin -> usr/bin
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    return argv


def _parents(paths: list[str]) -> list[str]:
    """Mount points' parent dirs, made traversable (bwrap would create them 0700)."""
    made = {"/", "/tmp", "/run", "/var", *_OS_DIRS}
    argv: list[str] = []
    for p in paths:
        for parent in reversed(Path(p).parents):
            d = str(parent)
            if d not in made and not any(d.startswith(o + "/") for o in _OS_DIRS):
                made.add(d)
                argv += ["--perms", "0755", "--dir", d]
    return argv


def has_bwrap() -> bool:
    return shutil.which("bwrap") is not None


def bwrap_argv(cwd: str | None, binds: list[str], ro_binds: list[str]) -> list[str]:
    """bubblewrap's view: the OS read-only, a private /tmp, /run and /var,
    /proc of its own PID namespace (no grader process is visible), the kit's
    venv and packages read-only, the work dir and `binds`. Nothing else of
    the machine exists in it."""
    # No --die-with-parent: `nslab lab start` leaves services running after it
    # exits; the lab's cgroup, not the parent, decides when they end.
    argv = ["bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-cgroup-try"]
    argv += _os_view()
    argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run"]
    argv += ["--tmpfs", "/var", "--dir", "/var/tmp", "--symlink", "../run", "/var/run"]
    argv += _parents([*kit_paths(), *ro_binds, *([cwd] if cwd else []), *binds])
    for d in kit_paths():
        argv += ["--ro-bind", d, d]
    for d in ro_binds:
        argv += ["--ro-bind", d, d]
    for d in [*([cwd] if cwd else []), *binds]:
        argv += ["--bind", d, d]
    if cwd:
        argv += ["--chdir", cwd]
    return argv + ["--"]


def wrapper_argv(
    *,
    user: str,
    limits: Limits,
    cwd: str | None,
    cgroup: str | None = None,
    caps: list[str] | tuple[str, ...] = (),
    binds: list[str] | tuple[str, ...] = (),
    ro_binds: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The argv prefix that runs a command as sandboxed student code (see main)."""
    argv = [sys.executable, "-m", "nslab.grading.sandbox", "--user", user]
    argv += ["--limits", json.dumps(limits.as_dict())]
    if cwd:
        argv += ["--cwd", cwd]
    if cgroup:
        argv += ["--cgroup", cgroup]
    if caps:
        argv += ["--caps", ",".join(caps)]
    for b in binds:
        argv += ["--bind", str(b)]
    for b in ro_binds:
        argv += ["--ro-bind", str(b)]
    return [*argv, "--"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="exec a command as sandboxed student code: its cgroup, "
        "rlimits, a bubblewrap file-system and PID view, an unprivileged user"
    )
    ap.add_argument("--user", default=None)
    ap.add_argument("--limits", default="{}", help="JSON of Limits fields")
    ap.add_argument("--cwd", default=None, help="the work dir (read-write in the sandbox)")
    ap.add_argument("--cgroup", default=None, help="LAB/ROLE: join nslab.slice/LAB/ROLE first")
    ap.add_argument("--bind", action="append", default=[], help="a path to show read-write")
    ap.add_argument("--ro-bind", action="append", default=[], help="a path to show read-only")
    ap.add_argument(
        "--caps",
        default="",
        help="comma-separated capabilities the command keeps as ambient ones (e.g. net_raw,net_admin)",
    )
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command given")
    limits = Limits.from_dict(json.loads(a.limits))
    d = Demote(a.user or slot_user(None, 0), limits, a.cwd, True)
    if a.cgroup:
        join_cgroup(a.cgroup, limits)
    caps = [c.strip() for c in a.caps.split(",") if c.strip()]
    # The user switch happens last, inside the sandbox, by setpriv.
    cmd = with_ambient_caps(d.uid, d.gid, caps, cmd)
    d.switch_user = False
    if os.geteuid() == 0 and has_bwrap() and os.environ.get("NSLAB_SANDBOX_FS", "1") != "0":
        cmd = bwrap_argv(a.cwd, a.bind, a.ro_bind) + cmd
        d.cwd = None  # bwrap changes directory inside the new view
        d.umask = 0o022  # for the mount points bwrap creates; the work dir stays 0700
    d()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"sandbox: cannot run {cmd[0]}: {exc.strerror}", file=sys.stderr)
        return 127


def join_cgroup(spec: str, limits: Limits) -> None:
    """Join nslab.slice/LAB/ROLE; the limits of all student code of the lab
    are set on LAB/student (a fork bomb or a leak is bounded as a whole)."""
    from nslab import cgroup

    if not cgroup.available():
        return  # doctor says so; rlimits and the per-slot user still bound it
    lab, _, role = spec.partition("/")
    top = role.split("/")[0]
    cgroup.create(lab, top, cgroup.Limits(memory_mb=limits.memory_mb, pids=limits.nproc))
    cgroup.create(lab, role)
    cgroup.join(lab, role)


if __name__ == "__main__":
    sys.exit(main())
