"""Ownership of processes: one cgroup v2 subtree per lab.

Every process nslab starts for a lab lives in `nslab.slice/<lab>/<role>`
(roles such as `supervisor`, `exec`, `services`, `student/<name>`), so the lab
owns its processes whatever they do to their environment, and teardown is
one `cgroup.kill` of `nslab.slice/<lab>`: forked children, daemons and
processes that changed their name go with it.

Where the cgroup v2 tree has controllers (Ubuntu 24.04, Debian 12 with
systemd), limits (memory.max, pids.max, cpu.max) and figures (memory.peak,
cpu.stat) come from it. On hybrid hosts (v1 controllers plus a controller-less
v2 tree at /sys/fs/cgroup/unified, as on the build VMs) ownership and kill
still come from v2, and limits from the v1 `memory`, `pids` and `cpu`
hierarchies, in groups of the same path. With no writable cgroup2 at all,
`available()` is False, `nslab doctor` says so, and callers fall back to
process labels and per-user kills.

    cgroup.create("l0", "student/ctrl", Limits(memory_mb=512, pids=64))
    cgroup.join("l0", "student/ctrl")          # this process (pid 0 = self)
    cgroup.kill("l0")                          # everything of the lab, then rmdir
"""

from __future__ import annotations

import functools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

SLICE = "nslab.slice"
V1_LIMITS = ("memory", "pids", "cpu")  # v1 hierarchies used for limits on hybrid hosts
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class Limits:
    """Limits of one group (None: no limit)."""

    memory_mb: int | None = None
    pids: int | None = None
    cpus: float | None = None  # cores' worth of CPU time (cpu.max quota/period)


@functools.cache
def _mounts() -> tuple[Path | None, dict[str, Path]]:
    """The cgroup2 mount point, and the v1 mount of each limit controller."""
    v2: Path | None = None
    v1: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None, {}
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        where, fstype, opts = Path(parts[1]), parts[2], parts[3].split(",")
        if fstype == "cgroup2" and v2 is None and "rw" in opts:
            v2 = where
        elif fstype == "cgroup":
            for c in V1_LIMITS:
                if c in opts and c not in v1:
                    v1[c] = where
    return v2, v1


def v2_root() -> Path | None:
    return _mounts()[0]


def _v2_controllers() -> set[str]:
    root = v2_root()
    try:
        return set((root / "cgroup.controllers").read_text().split()) if root else set()
    except OSError:
        return set()


def available() -> bool:
    """A writable cgroup2 tree with cgroup.kill: ownership by cgroup works."""
    root = v2_root()
    return bool(root and os.access(root, os.W_OK) and (root / "cgroup.procs").exists())


def limits_backend() -> str:
    """Where limits come from: 'v2', 'v1' (hybrid host) or 'none'."""
    if {"memory", "pids"} <= _v2_controllers():
        return "v2"
    if {"memory", "pids"} <= set(_mounts()[1]):
        return "v1"
    return "none"


def describe() -> str:
    """One line for `nslab doctor`."""
    if not available():
        return "no writable cgroup v2 tree: processes are owned by labels and users (fallback)"
    mode = {"v2": "cgroup v2 (limits from v2 controllers)", "v1": "hybrid"}.get(
        limits_backend(), "cgroup v2 without limit controllers"
    )
    extra = (
        " (ownership and kill from v2, limits from v1 memory/pids/cpu)" if mode == "hybrid" else ""
    )
    return f"{mode}{extra}: {v2_root()}/{SLICE}/<lab>/<role>"


def _check(part: str) -> str:
    if not part or not set(part) <= _NAME_OK or part in (".", ".."):
        raise ValueError(f"bad cgroup name part {part!r}")
    return part


def _rel(lab: str, role: str | None = None) -> Path:
    parts = [SLICE, _check(lab)] + [_check(p) for p in (role or "").split("/") if p]
    return Path(*parts)


def path(lab: str, role: str | None = None) -> Path:
    root = v2_root()
    if root is None:
        raise OSError("no cgroup2 tree is mounted")
    return root / _rel(lab, role)


def _write(p: Path, value: str) -> bool:
    try:
        p.write_text(value)
        return True
    except OSError:
        return False


def _enable_controllers(lab: str, role: str | None) -> None:
    """Let limits apply below nslab.slice (v2 only: a group can hold processes
    or delegate controllers, not both, so processes live in leaves only)."""
    want = [c for c in ("memory", "pids", "cpu") if c in _v2_controllers()]
    if not want:
        return
    root = v2_root()
    assert root is not None
    chain = [root, *(root / p for p in _ancestors(_rel(lab, role)))]
    for d in chain[:-1]:
        _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in want))


def _ancestors(rel: Path) -> list[Path]:
    return [Path(*rel.parts[: i + 1]) for i in range(len(rel.parts))]


def create(lab: str, role: str, limits: Limits | None = None) -> Path:
    """Create the group (and its parents); apply `limits` where a backend exists."""
    p = path(lab, role)
    p.mkdir(parents=True, exist_ok=True)
    _enable_controllers(lab, role)
    if limits is not None:
        apply_limits(lab, role, limits)
    return p


def apply_limits(lab: str, role: str, limits: Limits) -> None:
    backend = limits_backend()
    if backend == "v2":
        p = path(lab, role)
        if limits.memory_mb:
            _write(p / "memory.max", str(limits.memory_mb << 20))
            _write(p / "memory.swap.max", "0")
        if limits.pids:
            _write(p / "pids.max", str(limits.pids))
        if limits.cpus:
            _write(p / "cpu.max", f"{int(limits.cpus * 100_000)} 100000")
    elif backend == "v1":
        for c, d in _v1_dirs(lab, role, create=True).items():
            if c == "memory" and limits.memory_mb:
                _write(d / "memory.limit_in_bytes", str(limits.memory_mb << 20))
            elif c == "pids" and limits.pids:
                _write(d / "pids.max", str(limits.pids))
            elif c == "cpu" and limits.cpus:
                _write(d / "cpu.cfs_period_us", "100000")
                _write(d / "cpu.cfs_quota_us", str(int(limits.cpus * 100_000)))


def _v1_dirs(lab: str, role: str | None, create: bool = False) -> dict[str, Path]:
    out = {}
    for c, mount in _mounts()[1].items():
        d = mount / _rel(lab, role)
        if create:
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError:
                continue
        if d.is_dir():
            out[c] = d
    return out


def join(lab: str, role: str, pid: int = 0) -> None:
    """Move `pid` (0: the calling process) into the group, creating it if needed.
    Safe in a preexec function: it only writes files."""
    p = path(lab, role)
    if not p.is_dir():
        create(lab, role)
    (p / "cgroup.procs").write_text(str(pid))
    if limits_backend() == "v1":
        for d in _v1_dirs(lab, role).values():
            _write(d / "cgroup.procs", str(pid))


def joiner(lab: str, role: str):
    """A picklable preexec function that moves the child into the group."""
    return functools.partial(join, lab, role, 0)


def exists(lab: str, role: str | None = None) -> bool:
    return available() and path(lab, role).is_dir()


def pids(lab: str, role: str | None = None) -> list[int]:
    """Every process in the group and its descendants."""
    if not exists(lab, role):
        return []
    out: list[int] = []
    for dirpath, _dirs, _files in os.walk(path(lab, role)):
        try:
            out += [int(x) for x in Path(dirpath, "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def populated(lab: str, role: str | None = None) -> bool:
    try:
        events = (path(lab, role) / "cgroup.events").read_text()
    except OSError:
        return False
    return "populated 1" in events


def kill(lab: str, role: str | None = None, timeout: float = 10.0) -> bool:
    """SIGKILL everything in the group (descendants included), wait until it
    is empty, remove it (and its v1 twins). Returns True when it is gone."""
    if not exists(lab, role):
        _rmdirs_v1(lab, role)
        return True
    p = path(lab, role)
    _spare_caller(p)
    deadline = time.monotonic() + timeout
    has_kill = (p / "cgroup.kill").exists()
    while populated(lab, role) and time.monotonic() < deadline:
        if has_kill:
            _write(p / "cgroup.kill", "1")
        else:  # kernels before 5.14: freeze, kill each, thaw
            _write(p / "cgroup.freeze", "1")
            for pid in pids(lab, role):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _write(p / "cgroup.freeze", "0")
        time.sleep(0.01)
    gone = _rmdirs(p)
    _rmdirs_v1(lab, role)
    if role is None:
        _rmdirs_v1(lab, None)
    return gone


def _spare_caller(group: Path) -> None:
    """Never kill the hand that kills: the caller (e.g. a supervisor tearing
    down its own lab, or `nslab exec NODE -- nslab down`) and its ancestors
    leave the group for the root group first."""
    root = v2_root()
    assert root is not None
    pid = os.getpid()
    while pid > 1:
        try:
            line = next(
                x
                for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                if x.startswith("0::")
            )
            if (root / line[3:].lstrip("/")).is_relative_to(group):
                _write(root / "cgroup.procs", str(pid))
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, StopIteration, ValueError, IndexError):
            break


def _rmdirs(top: Path) -> bool:
    """Remove a group tree leaves first; a group still in use stays."""
    if not top.is_dir():
        return True
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass
    return not top.exists()


def _rmdirs_v1(lab: str, role: str | None) -> None:
    for d in _v1_dirs(lab, role).values():
        _rmdirs(d)


def freeze(lab: str, role: str | None, frozen: bool = True, timeout: float = 5.0) -> None:
    """Stop (or resume) every process of the group, e.g. while the grader
    measures a baseline."""
    p = path(lab, role)
    if not _write(p / "cgroup.freeze", "1" if frozen else "0"):
        raise OSError(f"cannot freeze {p}")
    want = f"frozen {int(frozen)}"
    end = time.monotonic() + timeout
    while want not in (p / "cgroup.events").read_text() and time.monotonic() < end:
        time.sleep(0.005)


def labs() -> list[str]:
    """Labs that own a cgroup (running, or left behind by a crash)."""
    root = v2_root()
    if not available() or root is None or not (root / SLICE).is_dir():
        return []
    return sorted(d.name for d in (root / SLICE).iterdir() if d.is_dir())


def of_pid(pid: int) -> tuple[str, str] | None:
    """(lab, role) of the nslab group a process is in, or None."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            parts = Path(line[3:]).parts
            if SLICE in parts:
                i = parts.index(SLICE)
                rest = parts[i + 1 :]
                if rest:
                    return rest[0], "/".join(rest[1:])
    return None


def usage(lab: str, role: str | None = None) -> dict[str, float]:
    """What the group used: peak memory (MB), CPU seconds, processes now."""
    out: dict[str, float] = {"pids": float(len(pids(lab, role)))}
    if not exists(lab, role):
        return out
    p = path(lab, role)
    try:
        for line in (p / "cpu.stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "usage_usec":
                out["cpu_s"] = int(v) / 1e6
    except OSError:
        pass
    for f in ("memory.peak", "memory.current"):
        try:
            out["memory_peak_mb"] = int((p / f).read_text()) / 2**20
            break
        except (OSError, ValueError):
            continue
    else:
        for c, d in _v1_dirs(lab, role).items():
            if c == "memory":
                try:
                    out["memory_peak_mb"] = (
                        int((d / "memory.max_usage_in_bytes").read_text()) / 2**20
                    )
                except (OSError, ValueError):
                    pass
    return out
