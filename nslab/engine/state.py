"""What a running lab owns, written to disk before it is created.

Every resource nslab creates is recorded here first (an intent log), so that
`nslab down`, the next `nslab up` or `nslab down --all` can remove exactly what
a lab created even if its supervisor was SIGKILLed half-way through a build.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

RUN_DIR = Path(os.environ.get("NSLAB_RUN_DIR", "/run/nslab"))


@dataclass
class Proc:
    """A process we started, identified by pid *and* start time so that a
    recycled pid is never mistaken for ours."""

    pid: int
    start: int
    role: str = ""  # "supervisor", "host:h1", "controller", ...

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start


@dataclass
class LabState:
    name: str
    topology: str = ""  # file the topology came from
    params: dict = field(default_factory=dict)
    status: str = "building"  # building | ready | stopping
    supervisor: Proc | None = None
    procs: list[Proc] = field(default_factory=list)
    hosts: dict[str, int] = field(default_factory=dict)  # node -> pid in its namespace
    containers: dict[str, str] = field(default_factory=dict)  # node -> container name
    root_ifaces: list[str] = field(default_factory=list)  # veth ends in the root namespace
    ovs_bridges: list[str] = field(default_factory=list)
    linux_bridges: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)  # key -> value before we changed it
    iptables: list[list[str]] = field(default_factory=list)  # rules we added (iptables args)
    controller_port: int | None = None
    degraded: list[str] = field(default_factory=list)
    ofports: dict[str, dict[str, int]] = field(default_factory=dict)  # switch -> iface -> port

    @property
    def dir(self) -> Path:
        return RUN_DIR / self.name

    @property
    def path(self) -> Path:
        return self.dir / "state.json"

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, self.path)  # atomic: a reader never sees half a file

    @classmethod
    def load(cls, name: str) -> LabState:
        data = json.loads((RUN_DIR / name / "state.json").read_text())
        sup = data.pop("supervisor", None)
        procs = data.pop("procs", [])
        st = cls(**data)
        st.supervisor = Proc(**sup) if sup else None
        st.procs = [Proc(**p) for p in procs]
        return st


def lab_names() -> list[str]:
    """Labs that have a state file (running, or left behind by a crash)."""
    if not RUN_DIR.is_dir():
        return []
    return sorted(p.parent.name for p in RUN_DIR.glob("*/state.json"))


def proc_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot, or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces, so split after ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has finished: only its exit status is left
        _reap(pid)
        return None
    return int(fields[19])  # field 22: start time


def _reap(pid: int) -> None:
    """Collect a zombie if it is our child (e.g. the supervisor `up` started)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def proc_of(pid: int, role: str = "") -> Proc:
    start = proc_start_time(pid)
    if start is None:
        raise ProcessLookupError(pid)
    return Proc(pid=pid, start=start, role=role)
